// Command npumesh is the single binary of npumesh: coordinator, node daemon,
// local cluster launcher and CLI.
package main

import (
	"os"

	"github.com/npumesh/npumesh/internal/cli"
)

func main() { os.Exit(cli.Run(os.Args[1:])) }
