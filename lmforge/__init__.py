"""lmforge: the whole life of a language model, natively on PyTorch."""
