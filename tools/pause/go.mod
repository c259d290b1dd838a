// The development node's pause image: a static binary of main.go, no dependencies.
module bioengine-operator/tools/pause

go 1.26
