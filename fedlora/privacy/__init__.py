"""Local objectives (LoRA and the membership-privacy variants) and privacy mechanisms."""
