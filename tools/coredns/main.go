// Cluster DNS of the development node: CoreDNS with only the plugins a Kubernetes cluster's
// DNS needs (kubernetes, answering Service and pod names; errors, health, ready, cache,
// loadbalance), so Service names resolve in pods as in a real cluster. CoreDNS's own main
// imports every plugin, with the cloud SDKs they need; this one keeps the build small.
package main

import (
	_ "github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
