# Two entry points a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
BLENDER_VENV := .venv-blender
BLENDER_STAMP := $(BLENDER_VENV)/.installed

.PHONY: demo test bench blender-addon clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	# torch first, pinned: 2.13.0 is the CPU build on disk; any other version pulls GBs of CUDA packages
	$(VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# bpy pins numpy < 2, so Blender gets its own virtualenv; bpy 4.5 has cp311 wheels only
$(BLENDER_STAMP):
	$(PYTHON) -m venv $(BLENDER_VENV)
	$(BLENDER_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BLENDER_VENV)/bin/python -m pip install --quiet 'bpy==4.5.*' pyzmq msgpack
	touch $(BLENDER_STAMP)

demo: $(STAMP)
	$(VENV)/bin/cvgen demo

test: $(STAMP) $(BLENDER_STAMP)
	$(VENV)/bin/python -m pytest

bench: $(STAMP)
	$(VENV)/bin/python bench/protocol_throughput.py

blender-addon: $(STAMP)
	$(VENV)/bin/python blender_addon/build.py

clean:
	rm -rf $(VENV) $(BLENDER_VENV) cvgen-demo build dist *.egg-info
