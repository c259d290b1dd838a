// The sandbox ("pause") container of the development node's pods. It holds the pod's
// namespaces for the other containers, reaps children re-parented to it, and exits on
// SIGINT or SIGTERM. Kubernetes' own pause image is not reachable here (no registry), so
// the node's containerd gets this one, built static and alone in its image.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
