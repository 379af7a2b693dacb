"""Recipes: thin compositions of components, one function per job (pretrain, quickstart, ...)."""
