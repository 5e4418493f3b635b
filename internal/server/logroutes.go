package server

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"custody/internal/api"
	"custody/internal/auditlog"
)

// AccessLog is what the log routes need from the access log;
// *auditlog.Log implements it. Deps.AccessLog nil makes them answer 503
// log_unavailable.
type AccessLog interface {
	LatestCheckpoint() auditlog.Checkpoint
	Entries(start, end int64) ([]auditlog.RawEntry, error)
	ProveInclusion(index, size int64) (auditlog.InclusionProof, error)
	ProveConsistency(old, size int64) (auditlog.ConsistencyProof, error)
	Status() auditlog.Status
}

func (s *Server) accessLog() (AccessLog, error) {
	if s.d.AccessLog == nil {
		return nil, errorf(http.StatusServiceUnavailable, api.CodeLogUnavailable, "this daemon has no access log")
	}
	return s.d.AccessLog, nil
}

// logError maps access-log read errors.
func logError(err error) error {
	switch {
	case errors.Is(err, auditlog.ErrRange):
		return errorf(http.StatusBadRequest, api.CodeBadRequest, "%v", err)
	default:
		return errorf(http.StatusServiceUnavailable, api.CodeLogUnavailable, "the access log cannot be read: %v", err)
	}
}

// logCheckpoint: GET /v1/log/checkpoint, the latest signed checkpoint.
func (s *Server) logCheckpoint(ctx context.Context, rq *request) (any, error) {
	l, err := s.accessLog()
	if err != nil {
		return nil, err
	}
	cp := l.LatestCheckpoint()
	return api.Checkpoint{Origin: cp.Origin, Size: cp.Size, Root: cp.Root, Checkpoint: string(cp.Note)}, nil
}

// logEntries: GET /v1/log/entries?start=&end= (end exclusive, at most auditlog.MaxRead).
func (s *Server) logEntries(ctx context.Context, rq *request) (any, error) {
	l, err := s.accessLog()
	if err != nil {
		return nil, err
	}
	start, end, err := queryInts(rq, "start", "end")
	if err != nil {
		return nil, err
	}
	es, err := l.Entries(start, end)
	if err != nil {
		return nil, logError(err)
	}
	out := api.LogEntries{Start: start, End: end, Entries: make([]api.LogEntry, len(es))}
	for i, e := range es {
		out.Entries[i] = api.LogEntry{Index: e.Index, LeafHash: e.LeafHash, Entry: e.Data}
	}
	return out, nil
}

// logInclusion: GET /v1/log/proof/inclusion?index=&size=
func (s *Server) logInclusion(ctx context.Context, rq *request) (any, error) {
	l, err := s.accessLog()
	if err != nil {
		return nil, err
	}
	index, size, err := queryInts(rq, "index", "size")
	if err != nil {
		return nil, err
	}
	p, err := l.ProveInclusion(index, size)
	if err != nil {
		return nil, logError(err)
	}
	return p, nil
}

// logConsistency: GET /v1/log/proof/consistency?old=&new=
func (s *Server) logConsistency(ctx context.Context, rq *request) (any, error) {
	l, err := s.accessLog()
	if err != nil {
		return nil, err
	}
	old, size, err := queryInts(rq, "old", "new")
	if err != nil {
		return nil, err
	}
	p, err := l.ProveConsistency(old, size)
	if err != nil {
		return nil, logError(err)
	}
	return p, nil
}

// queryInts reads two required non-negative integer query parameters.
func queryInts(rq *request, a, b string) (int64, int64, error) {
	var out [2]int64
	q := rq.URL.Query()
	for i, name := range []string{a, b} {
		v := q.Get(name)
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return 0, 0, errorf(http.StatusBadRequest, api.CodeBadRequest, "query parameter %s: want a non-negative integer, got %q", name, v)
		}
		out[i] = n
	}
	return out[0], out[1], nil
}
