//go:build tools

// Package tools pins the CSI external-provisioner sidecar the end-to-end tests
// run. e2e/build-tools builds it; nothing imports this package.
package tools

import (
	_ "github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner"
)
