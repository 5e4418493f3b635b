// Command katgen writes the envelope known-answer vectors. Run it through
// `go generate ./internal/envelope` (or `go run ./internal/katgen -o
// testdata/vectors.json -o2 testdata/vectors-v2.json` from
// internal/envelope). The output is deterministic; TestVectorsFileUpToDate
// and TestVectorsV2FileUpToDate fail when a committed file differs from
// what this writes.
package main

import (
	"flag"
	"log"
	"os"

	"custody/internal/envelope/internal/kat"
)

func main() {
	out := flag.String("o", "testdata/vectors.json", "output file (envelope v1)")
	out2 := flag.String("o2", "testdata/vectors-v2.json", "output file (envelope v2)")
	flag.Parse()
	b, err := kat.Generate()
	if err != nil {
		log.Fatal(err)
	}
	b2, err := kat.GenerateV2()
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(*out, b, 0o644); err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(*out2, b2, 0o644); err != nil {
		log.Fatal(err)
	}
}
