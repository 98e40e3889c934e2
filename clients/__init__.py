"""Flower ClientApp for fedlora: messages in, local LoRA round, messages out."""
