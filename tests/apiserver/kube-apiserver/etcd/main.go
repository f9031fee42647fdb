// Command etcd is etcd's own server main (go.etcd.io/etcd/server/v3/etcdmain),
// built from the same module graph as kube-apiserver: optional test etcd for
// ../kube-up.sh (KAS_ETCD=go), newer than Debian's 3.4 (it has
// RequestWatchProgress, so streaming lists / sendInitialEvents work).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
