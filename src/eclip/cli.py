"""Placeholder; replaced by the CLI."""
def main(argv=None) -> int:
    return 0
