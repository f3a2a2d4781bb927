# zimage build entry points. `make deps` installs what a bare Debian machine
# needs (run as root); everything else uses only Go and, for `kernels`, glslc.

GO        ?= go
BIN       ?= bin/zimage
TESTFLAGS ?= -count=1 -timeout 40m

DEBIAN_PACKAGES = gcc libc6-dev mesa-vulkan-drivers libvulkan1 libvulkan-dev \
	vulkan-validationlayers glslc spirv-tools vulkan-tools \
	chromium fonts-noto-cjk

.PHONY: deps build kernels test test-short bench vet fmt demo clean

deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEBIAN_PACKAGES)
	@command -v $(GO) >/dev/null || { echo "Go 1.26+ is required (https://go.dev/dl)"; exit 1; }
	$(GO) mod download

build:
	$(GO) build -o $(BIN) ./cmd/zimage

# Regenerate the SPIR-V kernels and their typed Go bindings from kernels/glsl.
kernels:
	$(GO) run ./kernels/gen

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

fmt:
	gofmt -w .

# The whole suite on lavapipe under the Vulkan validation layer; any
# validation message fails it (scripts/test).
test: vet
	TESTFLAGS="$(TESTFLAGS)" scripts/test

test-short:
	$(GO) test -short $(TESTFLAGS) ./...

bench:
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./engine/... ./model/... ./sched/...

# Build a tiny random-weight model with zimage's own tool and generate from it.
# The picture is noise: the weights are random. See README for real models.
demo: build
	$(BIN) make-model --arch sd-turbo -o out/demo-model
	$(BIN) generate -m out/demo-model -p "a lighthouse at dusk" -o out/demo.png

clean:
	rm -rf bin out
