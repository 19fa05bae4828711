GO ?= go
PROTO_GEN_GO_VERSION := v1.36.12
PROTO_GEN_GRPC_VERSION := v1.5.1
GOBIN_DIR := $(shell $(GO) env GOPATH)/bin

.PHONY: build test proto proto-check bench release deps

build:
	CGO_ENABLED=0 $(GO) build -o bin/npumesh ./cmd/npumesh

test:
	./scripts/test.sh

proto-tools:
	GOBIN=$(GOBIN_DIR) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTO_GEN_GO_VERSION)
	GOBIN=$(GOBIN_DIR) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTO_GEN_GRPC_VERSION)

proto: proto-tools
	PATH=$(GOBIN_DIR):$$PATH protoc -I proto \
		--go_out=proto --go_opt=paths=source_relative \
		--go-grpc_out=proto --go-grpc_opt=paths=source_relative \
		proto/npumesh/v1/*.proto

bench:
	$(GO) test -run '^$$' -bench . ./...

# Release: one static binary per architecture into $(DIST), and SHA256SUMS.
# VERSION, COMMIT and DIST may be given on the command line
# (make release VERSION=v0.1.0 DIST=/tmp/out).
# Evaluated once (not per use), so every binary carries the same stamp.
ifeq ($(origin VERSION),undefined)
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
endif
ifeq ($(origin COMMIT),undefined)
COMMIT := $(shell git rev-parse --short HEAD 2>/dev/null)
endif
DIST ?= dist
RELEASE_ARCHES := amd64 arm64 riscv64
VERSION_PKG := github.com/npumesh/npumesh/internal/version
RELEASE_LDFLAGS = -s -w -X $(VERSION_PKG).Version=$(VERSION) -X $(VERSION_PKG).Commit=$(COMMIT)

release:
	@mkdir -p $(DIST)
	@rm -f $(DIST)/SHA256SUMS $(addprefix $(DIST)/npumesh-linux-,$(RELEASE_ARCHES))
	@set -e; for arch in $(RELEASE_ARCHES); do \
		echo "release: $(DIST)/npumesh-linux-$$arch ($(VERSION))"; \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath \
			-ldflags "$(RELEASE_LDFLAGS)" -o $(DIST)/npumesh-linux-$$arch ./cmd/npumesh; \
	done
	cd $(DIST) && sha256sum $(addprefix npumesh-linux-,$(RELEASE_ARCHES)) > SHA256SUMS
