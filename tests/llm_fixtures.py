"""The tiny tier-3 model of :mod:`cdb.models.tiny`, under the name the tests import."""

from cdb.models.tiny import CHAT_TEMPLATE, TINY_CONFIG, byte_tokenizer, tiny_pretrained

__all__ = ["CHAT_TEMPLATE", "TINY_CONFIG", "byte_tokenizer", "tiny_pretrained"]
