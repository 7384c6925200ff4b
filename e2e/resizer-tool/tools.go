//go:build tools

// Package tools pins the CSI external-resizer sidecar the end-to-end tests
// run. e2e/build-tools builds it; nothing imports this package.
package tools

import (
	_ "github.com/kubernetes-csi/external-resizer/cmd/csi-resizer"
)
