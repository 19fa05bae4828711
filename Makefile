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
