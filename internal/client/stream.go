package client

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"iter"

	"custody/internal/api"
)

// maxStreamLine bounds one answer line of the streaming rewrap.
const maxStreamLine = 16 << 20

// RewrapStream sends lines (JSON lines, one api.RewrapItem per line) to
// POST /v1/envelopes/rewrap/stream and yields the daemon's answer lines
// as they arrive, in input order; blank input lines get none. The daemon
// answers while it still reads, so a caller may stop early (its break
// closes the connection; what was not answered yet was not rewrapped, or
// not released). An error ends the sequence: the request's own refusal
// (*api.Error), a broken connection, or an answer that is not a line.
func (c *Client) RewrapStream(ctx context.Context, lines []byte) iter.Seq2[api.RewrapLine, error] {
	return func(yield func(api.RewrapLine, error) bool) {
		resp, err := c.send(ctx, "POST", "/v1/envelopes/rewrap/stream", lines, "application/x-ndjson")
		if err != nil {
			yield(api.RewrapLine{}, err)
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
			yield(api.RewrapLine{}, answerError(resp, raw))
			return
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 0, 64<<10), maxStreamLine)
		for sc.Scan() {
			var l api.RewrapLine
			if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
				yield(api.RewrapLine{}, fmt.Errorf("unexpected answer line from the daemon: %w", err))
				return
			}
			if !yield(l, nil) {
				return
			}
		}
		if err := sc.Err(); err != nil {
			yield(api.RewrapLine{}, fmt.Errorf("reading the daemon's answer: %w", err))
		}
	}
}
