// Command katgen writes the envelope known-answer vectors. Run it through
// `go generate ./internal/envelope` (or `go run ./internal/katgen -o
// testdata/vectors.json` from internal/envelope). The output is
// deterministic; TestVectorsFileUpToDate fails when the committed file
// differs from what this writes.
package main

import (
	"flag"
	"log"
	"os"

	"custody/internal/envelope/internal/kat"
)

func main() {
	out := flag.String("o", "testdata/vectors.json", "output file")
	flag.Parse()
	b, err := kat.Generate()
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(*out, b, 0o644); err != nil {
		log.Fatal(err)
	}
}
