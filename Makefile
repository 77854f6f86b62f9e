# The two commands of the README. Both set everything up first (scripts/setup.sh).
.PHONY: setup demo test
OUT ?= demo_out

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/eclip demo --out $(OUT)

test: setup
	.venv/bin/python -m pytest -q
