package server

// Rewrap routes (batch and stream): adapters over package rewrap, which
// plans, runs on the device and finishes each envelope. Here: decoding,
// the background priority of this bulk work (priority.Background: its token
// calls give way to every other request waiting for a session), recording
// each envelope through Server.record, and encoding.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/envelope"
	"custody/internal/priority"
	"custody/internal/rewrap"
)

// rewrapEnvelopes: POST /v1/envelopes/rewrap {"items":[{"envelope","ref"}]}.
func (s *Server) rewrapEnvelopes(ctx context.Context, rq *request) (any, error) {
	in, err := decodeBatch[api.RewrapItem](s, rq)
	if err != nil {
		return nil, err
	}
	out := api.RewrapResults{Results: make([]api.BatchResult[api.Rewrapped], len(in.Items))}
	for i, o := range s.rewrapItems(ctx, rq, in.Items) {
		if o.Err != nil {
			out.Results[i].Error = classify(o.Err).wire()
		} else {
			out.Results[i].Result = o.Result
		}
	}
	out.Live = liveLatency(s.watch.Report())
	return out, nil
}

// rewrapItems rewraps items in the background priority, recording a
// decision for each through record; outcomes keep the items' order.
func (s *Server) rewrapItems(ctx context.Context, rq *request, items []api.RewrapItem) []rewrap.Outcome {
	defer s.watch.Bulk()() // after authorization: only a permitted caller's work is bulk
	return s.rewrap.Run(priority.Background(ctx), items, func(ctx context.Context, e auditlog.Entry, err error) error {
		return s.record(ctx, rq, e, err)
	})
}

// ParseRewrapLine parses one line of the streaming rewrap's input: a JSON
// object {"envelope":…,"ref":…} with no other member and nothing after it,
// "envelope" non-empty. It checks the structure only; the envelope itself
// is parsed later. Errors carry the bad_request code.
func ParseRewrapLine(line []byte) (envelopeText, ref string, err error) {
	it, err := parseRewrapLine(line)
	return it.Envelope, it.Ref, err
}

func parseRewrapLine(line []byte) (api.RewrapItem, error) {
	var it api.RewrapItem
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&it); err != nil {
		return api.RewrapItem{}, badRequest("line is not a JSON object {\"envelope\",\"ref\"}: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return api.RewrapItem{}, badRequest("trailing data after the JSON object")
	}
	if it.Envelope == "" {
		return api.RewrapItem{}, badRequest("envelope: required")
	}
	return it, nil
}

// The streaming rewrap reads one shard (rewrap.ShardSize) per token session
// into a window, rewraps a window at a time and keeps rewrapStreamWindows
// windows in flight.
const rewrapStreamWindows = 2

// maxStreamLine bounds one input line of the streaming rewrap.
const maxStreamLine = envelope.MaxTextSize + 1024

// streamer is a response written by the handler's own loop (see Server.serve)
// instead of one JSON value.
type streamer interface {
	stream(ctx context.Context, w http.ResponseWriter)
}

type rewrapStream struct {
	s  *Server
	rq *request
}

// rewrapEnvelopesStream: POST /v1/envelopes/rewrap/stream, JSON lines in
// ({"envelope","ref"} per line), JSON lines out (one per input line, in
// order: {"line","ref","envelope","changed","moved"} or {"line","ref","error"}).
// The request is bounded by limits.max_body_bytes and request_timeout like
// any other; a client sends a large set as several requests (custodyctl
// rewrap sends 500 lines per request).
func (s *Server) rewrapEnvelopesStream(ctx context.Context, rq *request) (any, error) {
	return &rewrapStream{s: s, rq: rq}, nil
}

func (st *rewrapStream) stream(ctx context.Context, w http.ResponseWriter) {
	s := st.s
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	rc := http.NewResponseController(w)
	// Answers go out while the request body is still being read.
	_ = rc.EnableFullDuplex()
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	sc := bufio.NewScanner(st.rq.Body)
	sc.Buffer(make([]byte, 0, 64<<10), maxStreamLine)
	// Lines are rewrapped a window at a time (rewrap.Service.Run: one
	// device batch per session). Two windows are in flight so that the
	// device is busy while the other window's answers are signed, logged
	// and written; answers go out in input order.
	size := s.rewrap.WindowSize()
	type window struct {
		lines   []streamJob
		results chan []api.RewrapLine
	}
	inFlight := make(chan *window, rewrapStreamWindows-1)
	slots := make(chan struct{}, rewrapStreamWindows)
	written := make(chan struct{})
	go func() {
		defer close(written)
		for w := range inFlight {
			for _, r := range <-w.results {
				_ = enc.Encode(r)
			}
			_ = rc.Flush()
		}
	}()
	var lines []streamJob
	send := func() {
		if len(lines) == 0 {
			return
		}
		w := &window{lines: lines, results: make(chan []api.RewrapLine, 1)}
		lines = nil
		slots <- struct{}{}
		go func() {
			w.results <- st.rewrapWindow(ctx, w.lines)
			<-slots
		}()
		inFlight <- w
	}
	var lineNo int64
	for sc.Scan() {
		lineNo++
		if len(strings.TrimSpace(sc.Text())) == 0 {
			continue
		}
		lines = append(lines, streamJob{line: lineNo, raw: append([]byte(nil), sc.Bytes()...)})
		if len(lines) == size {
			send()
		}
	}
	send()
	close(inFlight)
	<-written
	if err := sc.Err(); err != nil {
		ae := badRequest("reading line %d: %v", lineNo+1, err)
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			ae = errorf(http.StatusRequestEntityTooLarge, api.CodeBodyTooLarge, "request body larger than %d bytes; send the rest in another request", mbe.Limit)
		}
		_ = enc.Encode(api.RewrapLine{Line: lineNo + 1, Error: ae.wire()})
	}
}

// streamJob is one non-blank input line of the streaming rewrap.
type streamJob struct {
	line int64
	raw  []byte
}

// rewrapWindow answers one window of input lines, in order.
func (st *rewrapStream) rewrapWindow(ctx context.Context, lines []streamJob) []api.RewrapLine {
	results := make([]api.RewrapLine, len(lines))
	var items []api.RewrapItem
	var at []int
	for k, j := range lines {
		results[k] = api.RewrapLine{Line: j.line}
		it, err := parseRewrapLine(j.raw)
		if err != nil {
			results[k].Error = classify(err).wire()
			continue
		}
		items = append(items, it)
		at = append(at, k)
	}
	if len(items) == 0 {
		return results
	}
	for n, o := range st.s.rewrapItems(ctx, st.rq, items) {
		k := at[n]
		if o.Err == nil {
			r := o.Result
			results[k].Ref, results[k].Envelope, results[k].Changed, results[k].Moved = r.Ref, r.Envelope, &r.Changed, r.Moved
			continue
		}
		results[k].Ref, results[k].Error = items[n].Ref, classify(o.Err).wire()
	}
	return results
}
