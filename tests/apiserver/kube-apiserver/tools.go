//go:build tools

// Keeps k8s.io/kubernetes and its module graph in go.mod/go.sum under `go mod tidy`;
// kube-up.sh builds the package with `go build k8s.io/kubernetes/cmd/kube-apiserver`.

package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
