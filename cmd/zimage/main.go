// Command zimage generates images from text prompts; see `zimage help`.
package main

import "github.com/zimage/zimage/cli"

func main() { cli.Run() }
