//go:build tools

// Package tools pins etcd, the store behind the end-to-end tests' API server
// (the version Kubernetes v1.36 is tested with). e2e/build-tools builds it;
// nothing imports this package.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
