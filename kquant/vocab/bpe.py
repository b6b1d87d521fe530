"""BPE vocabularies from tokenizer.json, and the pre-tokenizer identified by its hash.

Ports, from llama.cpp as vendored in llama-cpp-python 0.3.36: conversion/base.py
TextModel.get_vocab_base, get_vocab_base_pre (hash table copied verbatim), _set_vocab_gpt2;
gguf-py vocab.py LlamaHfVocab (`llama_hf_vocab`).
Where upstream uses transformers' AutoTokenizer, we use the `tokenizers` library on
tokenizer.json (plus the post-processor rewrite transformers' Llama/Gemma fast tokenizers apply).
"""

from __future__ import annotations

import json
import re
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from hashlib import sha256
from itertools import compress, filterfalse
from operator import add, methodcaller
from pathlib import Path

from tokenizers import Tokenizer

from ..errors import InputError, UnsupportedError
from ..io.gguf_kv import TOK_LIST, TOK_MODEL, TOK_PRE, TOK_TYPE, KVRecorder, StringArray
from ..io.jsonio import LazyArray
from .special import (
    BYTE, CONTROL, NORMAL, SPIECE_UNDERLINE, UNUSED, USER_DEFINED, SpecialVocab, added_tokens_decoder, content_key,
    VOCAB_CACHES, cache_put, does_token_look_special, read_object,
    read_tokenizer_json,
)

# conversion/base.py get_vocab_base_pre: the text whose token ids identify a BPE pre-tokenizer
CHKTXT = '\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, \'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL'

PRE_TOKENIZER_HASHES: dict[str, str] = {
    "b6e8e1518dc4305be2fe39c313ed643381c4da5db34a98f6a04c093f8afbe99b": "chatglm-bpe",  # https://huggingface.co/THUDM/glm-4-9b-chat
    "81d72c7348a9f0ebe86f23298d37debe0a5e71149e29bd283904c02262b27516": "chatglm-bpe",  # https://huggingface.co/THUDM/glm-4-9b-chat
    "a1336059768a55c99a734006ffb02203cd450fed003e9a71886c88acf24fdbc2": "glm4",  # https://huggingface.co/THUDM/glm-4-9b-hf
    "9ca2dd618e8afaf09731a7cf6e2105b373ba6a1821559f258b272fe83e6eb902": "glm4",  # https://huggingface.co/zai-org/GLM-4.5-Air
    "cdf5f35325780597efd76153d4d1c16778f766173908894c04afc20108536267": "glm4",  # https://huggingface.co/zai-org/GLM-4.7-Flash
    "1431a23e583c97432bc230bff598d103ddb5a1f89960c8f1d1051aaa944d0b35": "minerva-7b",  # https://huggingface.co/sapienzanlp/Minerva-7B-base-v1.0
    "7e57df22b1fe23a7b1e1c7f3dc4e3f96d43a4eb0836d0c6bdc3436d7b2f1c664": "hunyuan",  # https://huggingface.co/tencent/Hunyuan-A13B-Instruct
    "bba3b3366b646dbdded5dbc42d59598b849371afc42f7beafa914afaa5b70aa6": "hunyuan-dense",  # https://huggingface.co/tencent/Hunyuan-4B-Instruct
    "e6ddf9c6686791c12d698d34c31ab9be1fea9af5a3d9a6909783ab382198ae1c": "hy_v4",  # https://huggingface.co/tencent/Hy4-preview
    "a6b57017d60e6edb4d88ecc2845188e0eb333a70357e45dcc9b53964a73bbae6": "falcon-h1",  # https://huggingface.co/tiiuae/Falcon-H1-0.5B-Base
    "60476e1243776c4fb1b993dbd7a5f15ac22f83c80afdf425fa5ae01c8d44ef86": "falcon-h1",  # https://huggingface.co/tiiuae/Falcon-H1-1B-Base
    "3eda48b4c4dc7de733d1a8b3e3b4a85243dbbf704da2ee9d42c6beced8897896": "falcon-h1",  # https://huggingface.co/tiiuae/Falcon-H1-7B-Base
    "48f8e02c0359c0bbdd82f26909171fac1c18a457bb47573ed1fe3bbb2c1cfd4b": "falcon-h1",  # https://huggingface.co/tiiuae/Falcon-H1-34B-Base
    "81212dc7cdb7e0c1074ca62c5aeab0d43c9f52b8a737be7b12a777c953027890": "kimi-k2",  # https://huggingface.co/moonshotai/Kimi-K2-Base
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # https://huggingface.co/Qwen/Qwen3-Embedding-0.6B
    "1444df51289cfa8063b96f0e62b1125440111bc79a52003ea14b6eac7016fd5f": "qwen35",  # https://huggingface.co/openbmb/MiniCPM-V-4_6
    "66b8d4e19ab16c3bfd89bce5d785fb7e0155e8648708a1f42077cb9fe002c273": "grok-2",  # https://huggingface.co/alvarobartt/grok-2-tokenizer
    "b3d1dd861f1d4c5c0d2569ce36baf3f90fe8a102db3de50dd71ff860d91be3df": "jina-v2-de",  # https://huggingface.co/aari1995/German_Semantic_V3
    "0fe1cf6eda062318a1af7270f3331a85c539a01778ff948e24388e949c5282f4": "gpt-2",  # https://huggingface.co/evilfreelancer/ruGPT3XL
    "9e454714343b69b99b71795c1d27a68c2a1d15dab111f4d353109f966af29da7": "lfm2",  # https://huggingface.co/LiquidAI/LFM2.5-8B-A1B
    "846deafc5b0fa786186fa4ae6c7b49903cf2f1d1895bdb80b9120d60be135252": "gemma4",  # https://huggingface.co/danish-foundation-models/DFM-Mimir
    "0a766d034107bc736a3f2dc4968fd62e54a3570f1454443e0c5a4cc6bd7941ed": "spark2_5",  # https://huggingface.co/XHToken/Spark-X2.5-1.7B
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # https://huggingface.co/meta-llama/Meta-Llama-3-8B
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",  # https://huggingface.co/deepseek-ai/deepseek-llm-7b-base
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",  # https://huggingface.co/deepseek-ai/deepseek-coder-6.7b-base
    "8aeee3860c56296a157a1fe2fad249ec40aa59b1bb5709f4ade11c4e6fe652ed": "falcon",  # https://huggingface.co/tiiuae/falcon-7b
    "0876d13b50744004aa9aeae05e7b0647eac9d801b5ba4668afc01e709c15e19f": "jina-v2-en",  # https://huggingface.co/jinaai/jina-embeddings-v2-base-en
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",  # https://huggingface.co/tiiuae/Falcon3-7B-Base
    "8e62295832751ca1e8f92f2226f403dea30dc5165e448b5bfa05af5340c64ec7": "bert-bge-large",  # https://huggingface.co/BAAI/bge-large-zh-v1.5
    "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166": "olmo",  # https://huggingface.co/allenai/OLMo-1.7-7B-hf
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",  # https://huggingface.co/bigcode/starcoder2-3b
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # https://huggingface.co/openai-community/gpt2
    "32d85c31273f8019248f2559fed492d929ea28b17e51d81d3bb36fff23ca72b3": "stablelm2",  # https://huggingface.co/stabilityai/stablelm-2-zephyr-1_6b
    "6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff": "refact",  # https://huggingface.co/smallcloudai/Refact-1_6-base
    "9c2227e4dd922002fb81bde4fc02b0483ca4f12911410dee2255e4987644e3f8": "command-r",  # https://huggingface.co/CohereForAI/c4ai-command-r-v01
    "d772b220ace2baec124bed8cfafce0ead7d6c38a4b65ef11261cf9d5d62246d1": "tiny_aya",  # https://huggingface.co/CohereLabs/tiny-aya-base
    "52df12b4c8d4176e7481aab4b6e8454d1fd0a210a04a574f6d4e067d10e23c3e": "cohere2moe",  # https://huggingface.co/CohereLabs/North-Mini-Code-1.0
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # https://huggingface.co/Qwen/Qwen1.5-7B
    "a8594e3edff7c29c003940395316294b2c623e09894deebbc65f33f1515df79e": "dbrx",  # https://huggingface.co/databricks/dbrx-base
    "c7699093ba4255a91e702aa38a596aa81669f3525dae06c2953267dde580f448": "jina-v1-en",  # https://huggingface.co/jinaai/jina-reranker-v1-tiny-en
    "171aeeedd6fb548d418a7461d053f11b6f1f1fc9b387bd66640d28a4b9f5c643": "jina-v2-es",  # https://huggingface.co/jinaai/jina-embeddings-v2-base-es
    "27949a2493fc4a9f53f5b9b029c82689cfbe5d3a1929bb25e043089e28466de6": "jina-v2-de",  # https://huggingface.co/jinaai/jina-embeddings-v2-base-de
    "a023e9fdc5a11f034d3ef515b92350e56fb2af1f66c6b6811a4444ea9bf8763d": "jina-v5-nano",  # https://huggingface.co/jinaai/jina-embeddings-v5-text-nano
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",  # https://huggingface.co/abacusai/Smaug-Llama-3-70B-Instruct
    "c7ea5862a53e4272c035c8238367063e2b270d51faa48c0f09e9d5b54746c360": "poro-chat",  # https://huggingface.co/LumiOpen/Poro-34B-chat
    "7967bfa498ade6b757b064f31e964dddbb80f8f9a4d68d4ba7998fcf281c531a": "jina-v2-code",  # https://huggingface.co/jinaai/jina-embeddings-v2-base-code
    "7fc505bd3104ca1083b150b17d088b59534ede9bde81f0dd2090967d7fe52cee": "viking",  # https://huggingface.co/LumiOpen/Viking-7B
    "b53802fb28e26d645c3a310b34bfe07da813026ec7c7716883404d5e0f8b1901": "jais",  # https://huggingface.co/core42/jais-13b
    "bc5108ee1eb6a3d600cadd065f63190fbd0554dbc9e4bbd6a0d977970afc8d2a": "jais-2",  # https://huggingface.co/inceptionai/Jais-2-8B-Chat
    "7b3e7548e4308f52a76e8229e4e6cc831195d0d1df43aed21ac6c93da05fec5f": "codeshell",  # https://huggingface.co/WisdomShell/CodeShell-7B
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # https://huggingface.co/mistralai/Mistral-Nemo-Base-2407
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # https://huggingface.co/HuggingFaceTB/SmolLM-135M
    "3c30d3ad1d6b64202cd222813e7736c2db6e1bd6d67197090fc1211fbc612ae7": "bloom",  # https://huggingface.co/bigscience/bloom
    "bc01ce58980e1db43859146dc51b1758b3b88729b217a74792e9f8d43e479d21": "gpt3-finnish",  # https://huggingface.co/TurkuNLP/gpt3-finnish-small
    "4e2b24cc4770243d65a2c9ec19770a72f08cffc161adbb73fcbb6b7dd45a0aae": "exaone",  # https://huggingface.co/LGAI-EXAONE/EXAONE-3.0-7.8B-Instruct
    "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085": "phi-2",  # https://huggingface.co/microsoft/phi-2
    "60824e3c0d9401f89943cbb2fff727f0e2d4c545ba4df2d6e4f09a6db0f5b450": "chameleon",  # https://huggingface.co/facebook/chameleon-7b
    "8b5a93ed704057481f240da0be7e7dca721d7f8f4755263b6807227a2cbeae65": "roberta-bpe",  # https://huggingface.co/sentence-transformers/stsb-roberta-base
    "ad851be1dba641f2e3711822f816db2c265f788b37c63b4e1aeacb9ee92de8eb": "gigachat",  # https://huggingface.co/ai-sage/GigaChat-20B-A3B-instruct
    "d4c8f286ea6b520b3d495c4455483cfa2302c0cfcd4be05d781b6a8a0a7cdaf1": "megrez",  # https://huggingface.co/Infinigence/Megrez-3B-Instruct
    "877081d19cf6996e2c4ff0e1236341e9b7bde288f5311a56a937f0afbbb3aeb5": "deepseek-v3",  # https://huggingface.co/deepseek-ai/DeepSeek-V3
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",  # https://huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",  # https://huggingface.co/Xenova/gpt-4o
    "7dec86086fcc38b66b7bc1575a160ae21cf705be7718b9d5598190d7c12db76f": "superbpe",  # https://huggingface.co/UW/OLMo2-8B-SuperBPE-t180k
    "1994ffd01900cfb37395608534236ecd63f2bd5995d6cb1004dda1af50240f15": "trillion",  # https://huggingface.co/trillionlabs/Trillion-7B-preview
    "96a5f08be6259352137b512d4157e333e21df7edd3fcd152990608735a65b224": "bailingmoe",  # https://huggingface.co/inclusionAI/Ling-lite
    "d353350c764d8c3b39c763113960e4fb4919bea5fbf208a0e3b22e8469dc7406": "llama4",  # https://huggingface.co/meta-llama/Llama-4-Scout-17B-16E-Instruct
    "0e9433cbbb161f89e264eb32e8e64bfe69e834973ffca5d41d3948a604a3e2a3": "pixtral",  # https://huggingface.co/mistral-community/pixtral-12b
    "d5f1dd6f980fec569fb218a81a7658ac45fc56b38c5a0adeb1c232fbe04ef5ec": "seed-coder",  # https://huggingface.co/ByteDance-Seed/Seed-Coder-8B-Base
    "b0a6b1c0bd5998ebd9df08611efde34a4ff03faed45ae09c43e6b31ebd4b94cf": "a.x-4.0",  # https://huggingface.co/skt/A.X-4.0
    "f6791d196f87ce6b56a7d234be618e0d58f8cda3549416635b2bebcd22cd95c4": "midm-2.0",  # https://huggingface.co/K-intelligence/Midm-2.0-Base-Instruct
    "169bf0296a13c4d9b7672313f749eb36501d931022de052aad6e36f2bf34dd51": "lfm2",  # https://huggingface.co/LiquidAI/LFM2.5-350M
    "2085e1638f6c377a0aa4ead21b27bb4cb941bf800df86ed391011769c1758dfb": "exaone4",  # https://huggingface.co/LGAI-EXAONE/EXAONE-4.0-32B
    "a1e163ecab2e718a4c829d1148b6e86824ec36163bb71941c3dca9cd5ac25756": "mellum",  # https://huggingface.co/JetBrains/Mellum-4b-base
    "a0b64b4385f123663873756336c085744376d015ff328bb1d901598f63c44152": "modern-bert",  # https://huggingface.co/answerdotai/ModernBERT-base
    "49fc0303c9e0d2c2c565c510f64b2d9b271276acdcdadff733249eda9f7d59df": "afmoe",  # https://huggingface.co/arcee-ai/Trinity-Tokenizer
    "9b1be57e70d20d9501b2b3186e792d81181ae36ada3903c26f9fea418cf87206": "bailingmoe2",  # https://huggingface.co/inclusionAI/Ling-mini-base-2.0
    "53e325976a6e142379c19b09afcae354f2f496f147afa8f9e189a33fe4e3024e": "granite-docling",  # https://huggingface.co/ibm-granite/granite-docling-258M
    "f4f37b6c8eb9ea29b3eac6bb8c8487c5ab7885f8d8022e67edc1c68ce8403e95": "minimax-m2",  # https://huggingface.co/MiniMaxAI/MiniMax-M2
    "4a2e2abae11ca2b86d570fc5b44be4d5eb5e72cc8f22dd136a94b37da83ab665": "kormo",  # https://huggingface.co/KORMo-Team/KORMo-tokenizer
    "9d70134b369a70e5735009b6de918f7581b5211f7c074d1f89f753aea8248af1": "youtu",  # https://huggingface.co/tencent/Youtu-LLM-2B
    "16389f0a1f51ee53e562ffd51c371dc508639ab0e4261502071836e50e223e91": "solar-open",  # https://huggingface.co/upstage/Solar-Open-100B
    "6c81ce329e0802883b22eabab0d3fa48357337ef1ecb45443828bf1f6254833f": "exaone-moe",  # https://huggingface.co/LGAI-EXAONE/K-EXAONE-236B-A23B
    "d30d75d9059f1aa2c19359de71047b3ae408c70875e8a3ccf8c5fba56c9d8af4": "qwen35",  # https://huggingface.co/Qwen/Qwen3.5-9B-Instruct
    "b4b8ca1f9769494fbd956ebc4c249de6131fb277a4a3345a7a92c7dd7a55808d": "joyai-llm",  # https://huggingface.co/jdopensource/JoyAI-LLM-Flash
    "e4d54df1ebc1f2b91acd986c5b51aa50837d5faf7c7398e73c1f9e9ee5d19869": "kanana2",  # https://huggingface.co/kakaocorp/kanana-2-30b-a3b-instruct-2601
    "862f827721df956049dff5ca81a57f29e575280bc622e290d3bf4e35eca29015": "f2llmv2",  # https://huggingface.co/codefuse-ai/F2LLM-v2-4B
    "62f6fb0a6fd5098caeabb19b07a5c1099cafc8b9c40eab6ea89ece4ec02fbc57": "sarvam-moe",  # https://huggingface.co/sarvamai/sarvam-30b
    "f728162c1315c26e40249849799b4ba3fe584c32084b4795b03eb295e63cb5af": "talkie",  # https://huggingface.co/lewtun/talkie-1930-13b-it-hf
    "36f3066e97b7f3994b379aaacde306c1444c6ae84e81a5ae3cd2b7ed3b8c42d4": "minicpm5",  # https://huggingface.co/openbmb/MiniCPM5-1B
    "f241072145675bf8322086f115aebad05e9f869557a238bf2150a2a417d1bf60": "granite-embed-multi-97m",  # https://huggingface.co/ibm-granite/granite-embedding-97m-multilingual-r2
    "789696f5946cc0fc59371f39f6097cafed196b3acded6140432f26bbb1ae1669": "granite-embed-multi-311m",  # https://huggingface.co/ibm-granite/granite-embedding-311m-multilingual-r2
    "9dcf830ee9990cdbf78cc523a5f7bd9ad8f3f9890c2d3581d2785ad10f07049d": "mellum2",  # https://huggingface.co/JetBrains/Mellum2-12B-A2.5B-Base
    "972da7b59cec44d1f0a490a86c96df53859e486e481563e5dddac155013d87ac": "laguna",  # https://huggingface.co/poolside/Laguna-XS.2
    "653660222fb704f61cbf2b618a8ae6502b7f8b20c980f9a5de07ed78e13319cd": "ufakzeka",  # https://huggingface.co/ufakai/ufakzeka-1
}

# transformers fast tokenizer classes whose __init__ replaces the post-processor by
# "[bos] $A [eos]" from add_bos_token / add_eos_token (update_post_processor): class -> defaults
_REBUILT_POSTPROC = {
    "LlamaTokenizer": (True, False), "LlamaTokenizerFast": (True, False),
    "CodeLlamaTokenizer": (True, False), "CodeLlamaTokenizerFast": (True, False),
    "GemmaTokenizer": (True, False), "GemmaTokenizerFast": (True, False),
    "GPTNeoXTokenizer": (False, False), "GPTNeoXTokenizerFast": (False, False),
}
# transformers 4.57 TOKENIZER_MAPPING_NAMES (fast class) for configs without tokenizer_class
_DEFAULT_TOKENIZER_CLASS = {
    "llama": "LlamaTokenizerFast", "mistral": "LlamaTokenizerFast", "mixtral": "LlamaTokenizerFast",
    "phi3": "LlamaTokenizerFast", "gemma": "GemmaTokenizerFast", "gemma2": "GemmaTokenizerFast",
    "gemma3_text": "GemmaTokenizerFast", "qwen2": "Qwen2TokenizerFast", "qwen3": "Qwen2TokenizerFast",
    "qwen2_moe": "Qwen2TokenizerFast", "qwen3_moe": "Qwen2TokenizerFast",
    "gemma3": "GemmaTokenizerFast", "llama4": "LlamaTokenizerFast", "llama4_text": "LlamaTokenizerFast",
    "mistral3": "LlamaTokenizerFast",  # without mistral_common, which llama.cpp's requirements do not install
}


def default_tokenizer_class(model_type: str) -> str:
    """AutoTokenizer's class for `model_type` when tokenizer_config.json names none."""
    return _DEFAULT_TOKENIZER_CLASS.get(model_type, "PreTrainedTokenizerFast")


# PreTrainedTokenizerBase.clean_up_tokenization replacements
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))

class HFTokenizer:
    """tokenizer.json through the `tokenizers` library, behaving like transformers' AutoTokenizer.

    `only`: the texts this tokenizer will encode besides its added tokens' contents (None: any text).
    Given, the BPE model is built with just the merges that can apply to those texts (see
    `_usable_merges`): the same ids for them, at a fraction of the memory (o200k's 446k merges take
    ~250 MB in `tokenizers`, its vocabulary ~60 MB)."""

    def __init__(self, folder: Path, model_type: str, only: Iterable[str] | None = None):
        self.path = folder / "tokenizer.json"
        if not self.path.is_file():
            raise UnsupportedError(f"{folder}: no tokenizer.json (slow-only tokenizers are not supported)")
        tj = read_tokenizer_json(self.path)  # also rejects non-JSON before the Rust parser sees it
        merges = _merge_list(tj)
        self._only = None if only is None or merges is None else set(only)
        if self._only is None:
            self.tok = self._build(None)
        else:
            with_merges = _with_merges(tj)
            bare = self._build(with_merges([]))
            self._only.update(t.content for t in bare.get_added_tokens_decoder().values())
            usable = _usable_merges(self.path, tj["model"]["vocab"], merges, _bpe_words(bare, self._only))
            del bare
            self.tok = self._build(with_merges(usable))
        tc_file = folder / "tokenizer_config.json"
        self.tc = read_object(tc_file) if tc_file.is_file() else {}
        self.cls = self.tc.get("tokenizer_class") or default_tokenizer_class(model_type)
        if not isinstance(self.cls, str):
            raise InputError(f"{tc_file}: 'tokenizer_class' must be a string, got {self.cls!r}")
        if self.cls.removesuffix("Fast") in ("LlamaTokenizer", "GemmaTokenizer", "CodeLlamaTokenizer") \
                and self.tc.get("add_prefix_space") is not None:
            raise UnsupportedError(f"{tc_file}: add_prefix_space with {self.cls} (transformers rebuilds it from the slow tokenizer)")

        self.vocab: dict[str, int] = self.tok.get_vocab(with_added_tokens=True)
        # id -> [content, special, normalized]; tokenizer_config's added_tokens_decoder flags win,
        # as transformers re-adds a token whose AddedToken differs
        self.added: dict[int, list] = {
            i: [t.content, t.special, t.normalized] for i, t in self.tok.get_added_tokens_decoder().items()
        }
        for tid, data in added_tokens_decoder(tc_file, self.tc).items():
            if tid not in self.added or self.added[tid][0] != data["content"]:
                raise UnsupportedError(
                    f"{tc_file}: added token {tid} {data['content']!r} is not the same token in tokenizer.json")
            self.added[tid][1] = bool(data.get("special", self.added[tid][1]))
            self.added[tid][2] = bool(data.get("normalized", self.added[tid][2]))
        for typ in ("bos", "eos", "unk", "sep", "pad", "cls", "mask"):
            content = self.special_content(typ)
            if content is not None and content not in self.vocab:
                raise UnsupportedError(f"{tc_file}: {typ}_token {content!r} is not in tokenizer.json")

    def _build(self, text: str | None) -> Tokenizer:
        """The `tokenizers` object of tokenizer.json, or of `text` (tokenizer.json with other merges)."""
        try:
            if text is None:
                return Tokenizer.from_file(str(self.path))
            return Tokenizer.from_str(text)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # tokenizers raises plain Exceptions, and pyo3 PanicException (a BaseException)
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise InputError(f"{self.path}: not a valid tokenizer.json ({msg})") from None

    def special_content(self, typ: str) -> str | None:
        entry = self.tc.get(f"{typ}_token")
        if isinstance(entry, dict):
            entry = entry.get("content")
        return entry if isinstance(entry, str) else None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """AutoTokenizer.encode(text, add_special_tokens=...)."""
        if self._only is not None and text not in self._only:
            raise ValueError(f"{self.path}: this tokenizer was built to encode only {len(self._only)} given texts")
        rebuilt = _REBUILT_POSTPROC.get(self.cls)
        if rebuilt is None or not add_special_tokens:
            return list(self.tok.encode(text, add_special_tokens=add_special_tokens).ids)
        add_bos = self.tc.get("add_bos_token", rebuilt[0])
        add_eos = self.tc.get("add_eos_token", rebuilt[1])
        ids = list(self.tok.encode(text, add_special_tokens=False).ids)
        for flag, typ in ((add_bos, "bos"), (add_eos, "eos")):
            if flag and self.special_content(typ) is None:
                raise InputError(f"{self.path.parent / 'tokenizer_config.json'}: add_{typ}_token is true but {typ}_token is not set")
        if add_bos:
            ids.insert(0, self.vocab[self.special_content("bos")])
        if add_eos:
            ids.append(self.vocab[self.special_content("eos")])
        return ids

    def decode(self, ids: list[int]) -> str:
        """AutoTokenizer.decode(ids) (skip_special_tokens=False, tokenizer_config's clean-up)."""
        text = self.tok.decode(ids, skip_special_tokens=False)
        if self.tc.get("clean_up_tokenization_spaces", False):
            for a, b in _CLEANUP:
                text = text.replace(a, b)
        return text


def _with_merges(tj: dict):
    """merges -> the JSON text of tokenizer.json with model.merges replaced by them (the rest
    serialized once: o200k's 200k-token vocabulary takes ~0.2 s)."""
    mark = f"kquant merges {uuid.uuid4()}"
    parts = json.dumps({**tj, "model": {**tj["model"], "merges": mark}}).split(json.dumps(mark))
    if len(parts) != 2:  # a file that holds this random string
        return lambda merges: json.dumps({**tj, "model": {**tj["model"], "merges": merges}})
    head, tail = parts
    return lambda merges: head + json.dumps(merges) + tail


def _merge_list(tj: dict) -> list | LazyArray | None:
    """model.merges when the merges that can apply to a text are the ones whose two parts joined occur
    in the text's BPE words (no subword prefix/suffix, no dropout, one token per id); else None."""
    model = tj.get("model")
    if not isinstance(model, dict) or model.get("type", "BPE") != "BPE" or model.get("dropout") is not None:
        return None
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        return None
    vocab, merges = model.get("vocab"), model.get("merges")
    if not isinstance(vocab, dict) or not isinstance(merges, (list, LazyArray)) or len(set(vocab.values())) != len(vocab):
        return None
    return merges


def _bpe_words(bare: Tokenizer, texts) -> list[str]:
    """The words the BPE model sees in `texts` (after added-token splitting, normalizer and
    pre-tokenizer), each as its initial symbols joined: the tokens of `bare`, built without merges."""
    words = []
    for text in texts:
        enc = bare.encode(text, add_special_tokens=False)
        cur, parts = None, []
        for tok, w in zip(enc.tokens, enc.word_ids):
            if w != cur and parts:
                words.append("".join(parts))
                parts = []
            cur = w
            if w is not None:
                parts.append(tok)
        if parts:
            words.append("".join(parts))
    return words


def _usable_merges(path: Path, vocab: dict, merges, words: list[str]) -> list:
    """The merges, in rank order, that BPE can apply within `words`: a merge joins two adjacent
    symbols of a word, each the join of a run of its initial symbols, so its two parts joined occur
    in the word. BPE applies the lowest-ranked applicable merge at each step, so dropping merges that
    can never apply changes no result. Refuses, naming the merge, what building the whole model would
    (tokenizers serialization.rs / models/bpe/model.rs BpeBuilder::build: a legacy merge not of
    two parts, a part or the merged token not in the vocabulary)."""
    joined = "\x00".join(words)
    occurs = _substring_test(joined)
    out: list = []
    for chunk in merges.chunks() if isinstance(merges, LazyArray) else (merges,):
        if not chunk:
            continue
        if type(chunk[0]) is str:
            if any(map(_is_version, chunk)):
                chunk = list(filterfalse(_is_version, chunk))  # skipped by tokenizers, not counted
                if not chunk:
                    continue
            pairs = list(map(_split_space, chunk))
            if set(map(len, pairs)) != {2}:
                return _usable_merges_checked(path, vocab, merges, joined)
        else:
            pairs = chunk
        a, b = zip(*pairs)
        ab = list(map(add, a, b))
        if not (all(map(vocab.__contains__, ab)) and all(map(vocab.__contains__, a)) and all(map(vocab.__contains__, b))):
            return _usable_merges_checked(path, vocab, merges, joined)  # raises, naming the first bad merge
        out.extend(compress(chunk, map(occurs(ab), ab)))
    return out


SUBSTRINGS_MAX_LEN = 256  # _substring_test's set holds the substrings up to this long,
SUBSTRINGS_MAX_SET = 1 << 20  # if there are at most this many


def _substring_test(joined: str):
    """strings -> a test equal to `joined.__contains__` on each of them: a set lookup (their hashes are
    already known) where they hold no NUL and none is longer than SUBSTRINGS_MAX_LEN, else the search."""
    segments = set(joined.split("\x00"))
    if sum(len(w) * min(len(w), SUBSTRINGS_MAX_LEN) for w in segments) > SUBSTRINGS_MAX_SET:
        return lambda strings: joined.__contains__
    # a string without NUL occurs in `joined` exactly when it occurs in one of its NUL-free segments
    subs = {w[i:j] for w in segments for i in range(len(w)) for j in range(i + 1, min(len(w), i + SUBSTRINGS_MAX_LEN) + 1)}
    subs.add("")  # in every string

    def test(strings: list[str]):
        if max(map(len, strings), default=0) > SUBSTRINGS_MAX_LEN or "\x00" in "".join(strings):
            return joined.__contains__
        return subs.__contains__

    return test


_is_version = methodcaller("startswith", "#version")
_split_space = methodcaller("split", " ")


def _usable_merges_checked(path: Path, vocab: dict, merges, joined: str) -> list:
    """_usable_merges one merge at a time, raising at the first merge the whole model would refuse."""
    out = []
    rank = 0
    for m in merges:
        if type(m) is str:
            if m.startswith("#version"):
                continue  # skipped by tokenizers (convert_merges_to_hashmap), not counted
            parts = m.split(" ")
            if len(parts) != 2:
                raise InputError(f"{path}: not a valid tokenizer.json (merge {rank + 1} is not two tokens)")
            a, b = parts
        else:
            a, b = m
        ab = a + b
        if ab in joined:
            out.append(m)
        if ab not in vocab or a not in vocab or b not in vocab:
            bad = next(t for t in (a, b, ab) if t not in vocab)
            raise InputError(f"{path}: not a valid tokenizer.json (merge token {bad!r} is not in the vocabulary)")
        rank += 1
    return out


# conversion/base.py TextModel.get_vocab_base_pre
def vocab_base_pre(tok: HFTokenizer) -> tuple[str | None, str]:
    """(tokenizer.ggml.pre name or None if unknown, chkhsh)."""
    chktok = tok.encode(CHKTXT)
    chkhsh = sha256(str(chktok).encode()).hexdigest()
    return PRE_TOKENIZER_HASHES.get(chkhsh), chkhsh


def known_pre_tokenizers() -> list[str]:
    return sorted(set(PRE_TOKENIZER_HASHES.values()))


# The vocabularies get_vocab_base built in this process, by the content of the files they come from
# (a batch converting one model to several types, checkpoints sharing a tokenizer): a few entries,
# kept encoded (o200k's 200k tokens: ~3 MB). special.clear_vocab_caches forgets them.
_VOCAB_CACHE: OrderedDict[tuple, tuple[StringArray, bytes, str | None]] = VOCAB_CACHES.setdefault("vocab_base", OrderedDict())


# conversion/base.py TextModel.get_vocab_base
def get_vocab_base(folder: Path, hp: dict, model_type: str, tokenizer_pre: str | None) -> tuple[list[str], list[int], str]:
    tokens, toktypes, tokpre = _vocab_base(folder, hp, model_type, tokenizer_pre)
    return list(tokens), toktypes, tokpre


def _vocab_base(folder: Path, hp: dict, model_type: str, tokenizer_pre: str | None) -> tuple[StringArray, list[int], str]:
    """get_vocab_base, its tokens encoded; built once per content of tokenizer.json and
    tokenizer_config.json (the only files it reads), vocab_size and the tokenizer class model_type
    implies when tokenizer_config.json names none (all that model_type changes: HFTokenizer.cls)."""
    key = (*content_key(folder / "tokenizer.json", folder / "tokenizer_config.json"), hp.get("vocab_size"),
           default_tokenizer_class(model_type))
    hit = _VOCAB_CACHE.get(key)
    if hit is None or (tokenizer_pre is None and hit[2] is None):
        tokens, toktypes, chkhsh = _build_vocab_base(folder, hp, model_type, tokenizer_pre)
        hit = (StringArray(tokens), bytes(toktypes), chkhsh)  # tokenizers' strings are always valid UTF-8
        del tokens
        cache_put(_VOCAB_CACHE, key, hit)
    _VOCAB_CACHE.move_to_end(key)
    tokens, toktypes, chkhsh = hit
    if tokenizer_pre is not None:
        tokpre = tokenizer_pre
    else:
        tokpre = PRE_TOKENIZER_HASHES.get(chkhsh)
        if tokpre is None:
            raise UnsupportedError(
                f"{folder / 'tokenizer.json'}: BPE pre-tokenizer not recognized (chkhsh {chkhsh}); pass --tokenizer-pre NAME, "
                f"one of: {', '.join(known_pre_tokenizers())}")
    return tokens, list(toktypes), tokpre


def _build_vocab_base(folder: Path, hp: dict, model_type: str, tokenizer_pre: str | None) -> tuple[list[str], list[int], str | None]:
    """(tokens, token types, chkhsh: None when tokenizer_pre is given) as get_vocab_base makes them."""
    tok = HFTokenizer(folder, model_type, only=(CHKTXT,))
    vocab_size = hp.get("vocab_size", len(tok.vocab))
    if tok.vocab and max(tok.vocab.values()) >= vocab_size:
        raise InputError(f"{tok.path}: token id {max(tok.vocab.values())} is outside config.json vocab_size {vocab_size}")
    chkhsh = None if tokenizer_pre is not None else vocab_base_pre(tok)[1]
    if chkhsh is not None and chkhsh not in PRE_TOKENIZER_HASHES:
        raise UnsupportedError(
            f"{tok.path}: BPE pre-tokenizer not recognized (chkhsh {chkhsh}); pass --tokenizer-pre NAME, "
            f"one of: {', '.join(known_pre_tokenizers())}")
    reverse_vocab: list[str | None] = [None] * vocab_size
    for t, id_ in tok.vocab.items():
        reverse_vocab[id_] = t
    added_vocab = {content: i for i, (content, _, _) in sorted(tok.added.items())}
    # upstream visits every id; only the unused ids and the added tokens' are not NORMAL tokens as they are
    tokens: list = reverse_vocab
    toktypes = [NORMAL] * vocab_size
    for i in [i for i, t in enumerate(reverse_vocab) if t is None]:
        tokens[i] = f"[PAD{i}]"
        toktypes[i] = UNUSED
    for i in sorted({tok.vocab[c] for c in added_vocab if c in tok.vocab}):
        token = reverse_vocab[i]
        if token not in added_vocab:
            continue
        _, special, normalized = tok.added[i]
        if not normalized:
            # llama.cpp assumes CONTROL and USER_DEFINED tokens are pre-normalized
            token = tok.decode(tok.encode(token, add_special_tokens=False))
        if special or does_token_look_special(token):
            toktypes[i] = CONTROL
        else:
            token = token.replace(SPIECE_UNDERLINE, " ")  # pre-normalize user-defined spaces
            toktypes[i] = USER_DEFINED
        tokens[i] = token
    return tokens, toktypes, chkhsh


# conversion/base.py TextModel._set_vocab_gpt2
def set_vocab_gpt2(rec: KVRecorder, folder: Path, hp: dict, model_type: str, tokenizer_pre: str | None) -> int:
    tokens, toktypes, tokpre = _vocab_base(folder, hp, model_type, tokenizer_pre)
    rec.add_string(TOK_MODEL, "gpt2")
    rec.add_string(TOK_PRE, tokpre)
    n = len(tokens)
    rec.add_array(TOK_LIST, tokens)
    rec.add_array(TOK_TYPE, toktypes)
    SpecialVocab(folder, load_merges=True).add_to_gguf(rec)
    return n


# gguf-py vocab.py LlamaHfVocab.__init__ pre-check: which path LlamaModel.set_vocab takes without tokenizer.model
def llama_hf_kind(folder: Path) -> str:
    """'missing' (no tokenizer.json), 'llama3' (TypeError upstream), 'spm-bpe' (LlamaHfVocab), 'other'."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return "missing"
    tj = read_tokenizer_json(path)
    model = tj.get("model")
    if not isinstance(model, dict) or "type" not in model:
        raise InputError(f"{path}: missing key 'model.type'")
    if model["type"] == "BPE" and model.get("ignore_merges", False) and not model.get("byte_fallback", True):
        return "llama3"
    decoder = tj.get("decoder") or {}
    if model["type"] != "BPE" or not model.get("byte_fallback", False) or decoder.get("type") != "Sequence":
        return "other"
    return "spm-bpe"


# transformers 4.57.6 (the converter's pinned version): the special-token defaults of the fast tokenizer
# classes LlamaHfVocab may load (GemmaTokenizerFast.__init__), by tokenizer_config.json tokenizer_class
_SPECIAL_DEFAULTS = {
    "GemmaTokenizer": {"unk": "<unk>", "bos": "<bos>", "eos": "<eos>", "pad": "<pad>"},
    "GemmaTokenizerFast": {"unk": "<unk>", "bos": "<bos>", "eos": "<eos>", "pad": "<pad>"},
    "PreTrainedTokenizerFast": {},
}
_SPECIAL_ATTRS = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")  # SpecialTokensMixin.SPECIAL_TOKENS_ATTRIBUTES


def _token_content(v, where: str) -> str:
    """A special token from tokenizer_config.json: a string or a serialized AddedToken."""
    if isinstance(v, dict):
        v = v.get("content")
    if not isinstance(v, str):
        raise InputError(f"{where} must be a string or an AddedToken object, got {v!r}"[:200])
    return v


def _all_special_tokens(folder: Path, tc: dict, cls: str) -> list[str]:
    """AutoTokenizer(...).all_special_tokens under transformers 4.57.6: the named special tokens (the
    class defaults unless tokenizer_config.json sets them, null unsetting one), additional_special_tokens,
    then the values of a dict extra_special_tokens (or the tokens of transformers 5's list), each once."""
    tc_file = folder / "tokenizer_config.json"
    if (folder / "special_tokens_map.json").is_file():
        raise UnsupportedError(f"{folder / 'special_tokens_map.json'}: special_tokens_map.json with a SentencePiece-style "
                               "tokenizer.json is not supported")
    defaults = _SPECIAL_DEFAULTS[cls]
    out: list[str] = []
    for typ in _SPECIAL_ATTRS:
        key = f"{typ}_token"
        v = tc[key] if key in tc else defaults.get(typ)
        if v is not None:
            out.append(_token_content(v, f"{tc_file}: {key!r}"))
    extra = tc.get("additional_special_tokens") or []
    if not isinstance(extra, list):
        raise InputError(f"{tc_file}: 'additional_special_tokens' must be a list, got {extra!r}"[:200])
    named = tc.get("extra_special_tokens", {})
    if not (isinstance(named, list) and named):  # transformers 5 reads them only in place of an empty list
        out += [_token_content(v, f"{tc_file}: 'additional_special_tokens' entry") for v in extra]
    if isinstance(named, list):
        # transformers 5 writes it as a list: a transformers 5 file, read as transformers 5 reads it
        # (PreTrainedTokenizerBase.from_pretrained: every other top-level `*_token` key holding a token
        # is a model-specific special token, then the list's tokens, additional_special_tokens only standing in
        # for an empty list). transformers 4.57.6 fails on a list
        # (_set_model_specific_special_tokens calls .keys(): AttributeError), so the pinned converter
        # writes nothing to match here (README: the one documented step past it)
        out += [_token_content(v, f"{tc_file}: {k!r}") for k, v in tc.items()
                if k.endswith("_token") and k[:-6] not in _SPECIAL_ATTRS and isinstance(v, (str, dict))]
        out += [_token_content(v, f"{tc_file}: 'extra_special_tokens' entry") for v in named]
        return list(dict.fromkeys(out))
    if not isinstance(named, dict):
        raise InputError(f"{tc_file}: 'extra_special_tokens' must be an object or a list, got {named!r}"[:200])
    out += [_token_content(v, f"{tc_file}: 'extra_special_tokens.{k}'") for k, v in named.items()]
    return list(dict.fromkeys(out))


# gguf-py vocab.py LlamaHfVocab (hf_tokens + added_tokens), its AutoTokenizer being transformers 4.57.6's
# fast tokenizer for tokenizer.json: vocab_size, get_added_vocab(), all_special_tokens / all_special_ids
def llama_hf_vocab(folder: Path) -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, token types) of LlamaHfVocab(folder).all_tokens()."""
    path = folder / "tokenizer.json"
    kind = llama_hf_kind(folder)
    if kind == "missing":
        raise InputError(f"{path}: file not found")
    if kind == "llama3":
        raise UnsupportedError(f"{path}: a Llama 3 style BPE tokenizer (ignore_merges, no byte fallback): LlamaHfVocab refuses it")
    if kind != "spm-bpe":
        raise UnsupportedError(f"{path}: not a SentencePiece-style BPE tokenizer.json (byte fallback, a Sequence decoder), "
                               "which LlamaHfVocab needs")
    tc_file = folder / "tokenizer_config.json"
    tc = read_object(tc_file) if tc_file.is_file() else {}
    cls = tc.get("tokenizer_class")
    if cls not in _SPECIAL_DEFAULTS:
        # without tokenizer_class AutoTokenizer goes through AutoConfig, which has no class for these models
        raise UnsupportedError(f"{tc_file}: tokenizer_class {cls!r} is not supported here ({', '.join(_SPECIAL_DEFAULTS)})")
    tok = HFTokenizer(folder, "", only=())
    base_size = tok.tok.get_vocab_size(with_added_tokens=False)  # PreTrainedTokenizerFast.vocab_size
    specials = _all_special_tokens(folder, tc, cls)
    for t in specials:
        if t not in tok.vocab:  # transformers would add it as a new token, past the model's vocabulary
            raise UnsupportedError(f"{tc_file}: special token {t!r} is not in tokenizer.json")
    special_ids = {tok.vocab[t] for t in specials}
    added_list = [content for i, (content, _, _) in sorted(tok.added.items()) if i >= base_size]
    reverse = {i: t for t, i in tok.vocab.items()}
    tokens: list[str] = []
    toktypes: list[int] = []
    for i in range(base_size):
        if i not in reverse:
            raise InputError(f"{path}: token id {i} is missing from the vocabulary")
        t = reverse[i]
        tokens.append(t)
        if re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", t):
            toktypes.append(BYTE)
        else:
            toktypes.append(CONTROL if i in special_ids else NORMAL)
    for t in added_list:
        tokens.append(t)
        toktypes.append(CONTROL if t in specials else USER_DEFINED)
    return tokens, [-1000.0] * len(tokens), toktypes
