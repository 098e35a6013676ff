# ociboot: the repository root is the gokrazy instance. gok has no flag for a
# config path; it reads <parent_dir>/<instance>/config.json, so we pass this
# checkout's parent as parent dir and its directory name as instance. That
# works from any checkout path.
GOK       := go tool gok
INSTANCE  := $(notdir $(CURDIR))
PARENT    := $(abspath $(CURDIR)/..)
GOKFLAGS  := --parent_dir $(PARENT) --instance $(INSTANCE)

# The image for `make image`. A CM4 with 8 GB eMMC has a little under 8e9
# bytes; set TARGET_STORAGE_BYTES to your eMMC/SD card size: everything past
# the boot and root partitions becomes /perm, the image cache.
IMAGE                ?= ociboot.img
TARGET_STORAGE_BYTES ?= 7000000000

# `make run` runs every service on this machine (the laptop as head node).
STORE  ?= $(CURDIR)/.build/store
CONFIG ?= $(CURDIR)/config.json
BIN    := $(CURDIR)/.build/bin

SERVICES := dhcpd tftpd ocicache nfsd nbdd status

# `make node-image` writes the node image (an OCI layout) here; push it to
# the registry the head node pulls from with skopeo (see README).
NODE_IMAGE       ?= $(CURDIR)/.build/node-image
NODE_IMAGE_FLAGS ?=

# `make fuzz` runs every fuzz target for this long, one after the other.
FUZZTIME ?= 10m

# `make test` needs pipefail: go test's status must survive the summary.
SHELL := /bin/bash

# `make check` asks each image's registry whether its reference resolves;
# CHECKFLAGS=-online=false skips that (no network).
CHECKFLAGS   ?=
CHECK_CONFIG ?= $(CURDIR)/config.json

.PHONY: check image update root run deps test unit fuzz bench demo builddir-sync node-image node-import

## check: validate config.json as the services will (errors stop; warnings: Netboot key case, DefaultImage, unreachable images)
check:
	go run ./appliance/config/cmd/check $(CHECKFLAGS) $(CHECK_CONFIG)

## image: build a full Raspberry Pi image (boot, root, and an ext4 /perm)
image: check
	@command -v mkfs.ext4 >/dev/null || [ "$$(id -u)" != 0 ] || apt-get -o DPkg::Lock::Timeout=600 install -y -qq e2fsprogs
	@command -v mkfs.ext4 >/dev/null || { echo "make image: mkfs.ext4 not found; install e2fsprogs (as root: apt-get install e2fsprogs)" >&2; exit 1; }
	mkdir -p .build
	$(GOK) $(GOKFLAGS) overwrite --full $(IMAGE) --target_storage_bytes=$(TARGET_STORAGE_BYTES) 2>&1 | tee .build/gok-image.log
	@# gok leaves the perm partition unformatted and prints the mkfs command
	@# for it; the services refuse a read-only /perm, so format it here.
	@set -e; args=$$(sed -n 's/.*mkfs\.ext4 -F -E offset=\([0-9]*\) .* \([0-9]*\)$$/\1 \2/p' .build/gok-image.log | tail -n 1); \
	  [ -n "$$args" ] || { echo "make image: gok did not report the perm partition; is TARGET_STORAGE_BYTES large enough?" >&2; exit 1; }; \
	  set -- $$args; mkfs.ext4 -q -F -L perm -E offset=$$1 $(IMAGE) $$2; \
	  echo "$(IMAGE): ready to flash (perm partition formatted at offset $$1)"

## node-image: build the Debian node image (systemd, raspi-firmware, arm64 kernel) as an OCI layout in $(NODE_IMAGE); as root
node-image:
	go run ./appliance/nodeimage/cmd/nodeimage build -o $(NODE_IMAGE) $(NODE_IMAGE_FLAGS)

## node-import: turn an SD-card image (IMG=raspios.img.xz) into an OCI layout in $(NODE_IMAGE)
node-import:
	@[ -n "$(IMG)" ] || { echo "make node-import: name the SD-card image: make node-import IMG=file.img.xz" >&2; exit 2; }
	go run ./appliance/nodeimage/cmd/nodeimage import -o $(NODE_IMAGE) $(IMG)

## root: build only the root file system (what `make test` inspects)
root: check
	mkdir -p .build
	$(GOK) $(GOKFLAGS) overwrite --root .build/root.squashfs

## update: build and ship the image to the running head node over the network
update: check
	$(GOK) $(GOKFLAGS) update

## run: run all services on this machine against $(STORE) (needs root for ports 67, 69, 111, 2049, 10809)
run:
	mkdir -p $(BIN) $(STORE)
	go build -o $(BIN)/ $(addprefix ./services/,$(SERVICES))
	@set -e; pids=""; \
	  trap 'kill $$pids 2>/dev/null; wait; exit 0' INT TERM; \
	  for s in $(SERVICES); do \
	    $(BIN)/$$s -config $(CONFIG) -store $(STORE) -allow_tmpfs & pids="$$pids $$!"; \
	  done; \
	  echo "status page: http://localhost:8080/  (Ctrl-C stops all)"; \
	  wait

## deps: install the Debian packages the tests use (as root; quick when all are there)
deps:
	tests/lab/install-deps.sh

## test: deps, vet, every test (network namespaces, QEMU, the image build), a summary by package
test: deps
	go vet ./...
	mkdir -p .build
	go build -o .build/testsum ./tests/lab/testsum
	set -o pipefail; go test -count=1 -timeout 80m -json ./... 2>&1 | .build/testsum

## unit: only what runs without root or network namespaces
unit:
	go test -short ./...

## fuzz: every fuzz target (network parsers, image formats) for FUZZTIME (10m) each; stops at the first failure, whose input lands in the package's testdata/fuzz
fuzz:
	@set -e; for pkg in $$(go list ./appliance/...); do \
	  for f in $$(go test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f ($(FUZZTIME))"; \
	    go test $$pkg -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME); \
	  done; \
	done

## bench: benchmarks against peers on this machine (dnsmasq, nfs-ganesha, skopeo+umoci)
bench:
	OCIBOOT_BENCH=1 go test -timeout 60m -count=1 -run Bench -v ./tests/bench/...

## demo: a simulated cluster (head node + three QEMU nodes in network namespaces) until Ctrl-C; as root
demo:
	OCIBOOT_DEMO=1 go test -count=1 -timeout 0 -run '^TestDemo$$' -v ./tests/e2e/

## builddir-sync: refresh builddir/go.sum after go.mod changed
builddir-sync:
	cd builddir && GOFLAGS=-mod=mod go list -deps -tags gokrazy \
	  $$(sed -n 's/^ *"\(github.com\/[^"]*\)",\{0,1\}$$/\1/p' ../config.json | sort -u) \
	  github.com/gokrazy/gokrazy/cmd/dhcp github.com/gokrazy/gokrazy/cmd/ntp \
	  github.com/gokrazy/gokrazy/cmd/randomd github.com/gokrazy/gokrazy/cmd/heartbeat >/dev/null
	cd builddir && go mod download github.com/gokrazy/firmware github.com/gokrazy/kernel.rpi github.com/gokrazy/rpi-eeprom
