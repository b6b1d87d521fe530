"""The exceptions kquant raises for problems a user can fix: the CLI prints them as one line."""


class KquantError(Exception):
    """Base of every error the CLI reports as one line with a non-zero exit."""

    exit_code = 2


class InputError(KquantError, ValueError):
    """A bad input file, folder or value: the message names the file, the field and the value."""


class OutputError(KquantError):
    """The output cannot be written as asked (exists, same as an input, unwritable, disk full)."""


class UnsupportedError(KquantError, NotImplementedError):
    """A valid input that kquant does not handle (architecture, tokenizer, dtype): names what is supported."""
