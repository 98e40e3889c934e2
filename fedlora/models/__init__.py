"""Base LDM building and loading, LoRA attach/extract, pretraining."""
