PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: run test reliability lint typecheck clean chromium

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e ".[test]"
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/caselink dev

test: $(STAMP) chromium
	$(BIN)/ruff check .
	$(BIN)/mypy schemas services
	$(BIN)/pytest -q $(PYTEST_PARALLEL)

# The suite spends most of its time waiting (consumer groups joining, deadlines passing, services
# restarting), so four workers share the two cores well; each test file stays on one worker with
# its own embedded PostgreSQL and Tansu. `make test PYTEST_PARALLEL=` runs it in one process.
PYTEST_PARALLEL ?= -n 4 --dist loadfile

# Only the fault-injection and security suite (tests/reliability, RELIABILITY.md): frozen broker,
# stopped database, kill -9 mid-batch, SIGTERM, poison messages, bad input, PII scans.
reliability: $(STAMP)
	$(BIN)/pytest -q -m reliability $(PYTEST_PARALLEL)

# The dashboard's browser test drives Debian's Chromium (with a Chinese font, so its screenshots
# are readable). Install them where we may (root with apt); elsewhere the test skips and says why.
BROWSER_PACKAGES := chromium fonts-wqy-microhei
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the browser test"; \
	    apt-get install -y -q $(BROWSER_PACKAGES) >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(BROWSER_PACKAGES) >/dev/null 2>&1; } || \
	    echo "could not install chromium: the browser test will skip"; \
	  else echo "chromium is not installed and cannot be installed here: the browser test will skip"; fi; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
