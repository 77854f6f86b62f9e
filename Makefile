# The two commands of the README. Both set everything up first (scripts/setup.sh).
.PHONY: setup demo test
OUT ?= demo_out

setup:
	./scripts/setup.sh

# the demo needs no extra; the tests need the test tools and the optional engines (Ray, Milvus Lite)
demo:
	EXTRAS= ./scripts/setup.sh
	.venv/bin/eclip demo --out $(OUT)

test:
	EXTRAS=test ./scripts/setup.sh
	.venv/bin/python -m pytest -q
