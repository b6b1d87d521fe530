"""Test order for pytest-xdist's loadscope (scripts/test): the longest modules first, so that the two
workers of a 2-core machine finish together instead of one running a long module alone at the end
(longest-processing-time-first list scheduling). The costs are what a whole run measured (cold numba
cache: test_rounding is mostly kernel compilation); modules not listed keep pytest's order after these."""

from __future__ import annotations

LONGEST_FIRST = ("test_rounding", "test_arch_reference", "test_vocab", "test_arch_runs", "test_gguf_split",
                 "test_cli_hardening", "test_warm", "test_arch", "test_arch_tools", "test_quantized_sources")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rpartition(".")[2] if item.module else "", len(rank)))
