.PHONY: setup install test data bench
setup:   ## install everything, build the corpus, run every experiment on the cpu preset
	scripts/setup.sh
install: ## Python + Debian dependencies only
	scripts/install.sh dev,notebooks
data:    ## extract the real-audio corpus from the Debian sound packages
	.venv/bin/sam prepare-data
test:    ## install what the tests need, then run them
	scripts/test.sh
bench:   ## CPU benchmarks -> benchmarks/results/
	for f in benchmarks/bench_*.py; do .venv/bin/python $$f || exit 1; done
