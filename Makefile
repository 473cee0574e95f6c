.PHONY: setup reproduce install test data bench
setup:     ## install everything, build the corpus, run the main job (Fig. 2 and the token-length table)
	scripts/setup.sh
reproduce: ## every paper table and figure (experiments/run_all.py; default preset, or PRESET=...)
	scripts/setup.sh --all
install:   ## Python + Debian dependencies only
	scripts/install.sh dev,notebooks
data:      ## extract the real-audio corpus from the Debian sound packages
	.venv/bin/sam prepare-data
test:      ## install what the tests need, then lint (ruff) and run the tests
	scripts/test.sh
bench:     ## CPU benchmarks -> benchmarks/results/
	for f in benchmarks/bench_*.py; do .venv/bin/python $$f || exit 1; done
