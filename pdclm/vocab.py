"""The model's alphabet: the 256 byte values plus control symbols above 255.

Any byte sequence is valid input; control symbols only ever come from the project's own
formatting (document and episode delimiters), never from user bytes.
"""

BOS = 256  # begin of document
EOS = 257  # end of document
THINK = 258  # begin of thinking
END_THINK = 259  # end of thinking
ANSWER = 260  # the answer follows
VOCAB_SIZE = 264  # 261 symbols, padded to a multiple of 8

NEWLINE = ord("\n")


def encode_document(data: bytes) -> list[int]:
    """A document as the symbol stream the model reads: BOS, its bytes, EOS."""
    return [BOS, *data, EOS]


def decode(symbols: list[int]) -> bytes:
    """Bytes of a symbol stream, dropping control symbols."""
    return bytes(s for s in symbols if s < 256)
