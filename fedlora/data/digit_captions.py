"""The caption every digit dataset uses, so a base trained on one reads the other."""

DIGIT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digit_caption(label: int) -> str:
    return f"a handwritten digit {DIGIT_WORDS[label]}"
