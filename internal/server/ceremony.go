package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"time"

	"custody/hsm"
	"custody/internal/api"
	"custody/internal/auditlog"
	"custody/internal/ceremony"
	"custody/internal/keys"
)

// Escrow key ceremonies over the socket (docs/ceremonies.md): the routes
// of a ceremony.Service, which runs them. A caller acts as an officer only
// if the policy gives its principal role "officer" (the routes'
// permission) AND its Unix user is in the officers file. Each step is one
// access-log entry through Server.record; an executed ceremony adds a
// second entry naming its signed transcript's SHA-256. Executing is
// Service.Claim, then the record of the decision, then Service.Run: the
// decision is durable before the token is touched.

func (s *Server) ceremonies() (*ceremony.Service, error) {
	c := s.d.Ceremonies
	if c == nil {
		return nil, errorf(http.StatusServiceUnavailable, api.CodeCeremonyUnavailable, "escrow key ceremonies are not configured: the daemon has no ceremony.officers_file")
	}
	return c, nil
}

// officer returns the caller as an officer: the route already checked role
// officer; the officers file must list the caller's uid too.
func (s *Server) officer(rq *request) (*ceremony.Service, ceremony.Officer, error) {
	c, err := s.ceremonies()
	if err != nil {
		return nil, ceremony.Officer{}, err
	}
	o, err := c.Officers().ByUID(rq.peer.UID)
	if err != nil {
		return nil, ceremony.Officer{}, fmt.Errorf("%w: principal %q has role officer but uid %d is not in the officers file", ceremony.ErrNotOfficer, rq.principal.Name, rq.peer.UID)
	}
	return c, o, nil
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// recorded records the step and returns err, or log_unavailable.
func (s *Server) recorded(ctx context.Context, rq *request, op, detail string, err error) error {
	if rerr := s.record(ctx, rq, auditlog.Entry{Operation: op, Detail: detail}, err); rerr != nil {
		return rerr
	}
	return err
}

func viewRequest(p ceremony.Pending) api.CeremonyRequest {
	r := p.Request
	v := api.CeremonyRequest{ID: r.ID, Kind: r.Kind, Params: r.Params, Requester: r.Requester, Quorum: r.Quorum,
		NotBefore: r.NotBefore, NotAfter: r.NotAfter, Nonce: r.Nonce, Hash: r.Hash(), Canonical: r.Canonical(), Approvals: []string{},
		Shares: p.Shares, ShareKind: p.ShareKind, Needed: p.Needed}
	for _, a := range p.Approvals {
		v.Approvals = append(v.Approvals, a.Officer)
	}
	return v
}

// ceremonyCreate: POST /v1/ceremony/requests.
func (s *Server) ceremonyCreate(ctx context.Context, rq *request) (any, error) {
	c, o, err := s.officer(rq)
	if err != nil {
		return nil, s.recorded(ctx, rq, "ceremony.request", "", err)
	}
	var in api.CeremonyRequestInput
	if err := decodeJSON(rq.Request, &in); err != nil {
		return nil, s.recorded(ctx, rq, "ceremony.request", "", err)
	}
	p, err := c.Request(ctx, o, ceremony.Input{Kind: in.Kind, Params: in.Params, M: in.M, N: in.N, Window: in.Window, Manifest: in.Manifest})
	if err != nil {
		return nil, s.recorded(ctx, rq, "ceremony.request", "kind "+clip(in.Kind), err)
	}
	r := p.Request
	if err := s.recorded(ctx, rq, "ceremony.request", fmt.Sprintf("request %s kind %s m %d sha256 %s", r.ID, r.Kind, r.Quorum, r.Hash()), nil); err != nil {
		return nil, err
	}
	return viewRequest(p), nil
}

// ceremonyShow: GET /v1/ceremony/requests/{id}.
func (s *Server) ceremonyShow(ctx context.Context, rq *request) (any, error) {
	c, _, err := s.officer(rq)
	if err != nil {
		return nil, s.recorded(ctx, rq, "ceremony.show", "", err)
	}
	p, err := c.Get(rq.PathValue("id"))
	if err != nil {
		return nil, err
	}
	return viewRequest(p), nil
}

// ceremonyStatusRoute: GET /v1/ceremony.
func (s *Server) ceremonyStatusRoute(ctx context.Context, rq *request) (any, error) {
	c, o, err := s.officer(rq)
	if err != nil {
		return nil, s.recorded(ctx, rq, "ceremony.status", "", err)
	}
	st, err := c.Status(ctx)
	if err != nil {
		return nil, err
	}
	out := api.CeremonyStatus{Officer: o.Name, Genesis: st.Genesis, EscrowVersions: []api.EscrowVersion{}, Pending: []api.CeremonyRequest{}}
	if r := st.SOPIN; r != nil {
		out.SOPIN = &api.SOPINShares{Set: r.SetID, Threshold: r.Threshold}
		for _, sh := range r.Shares {
			out.SOPIN.Holders = append(out.SOPIN.Holders, sh.Officer)
		}
	}
	for _, v := range st.EscrowVersions {
		ev := api.EscrowVersion{Label: v.Label, Version: v.Number, State: v.State, Fingerprint: v.Fingerprint()}
		if !v.Created.IsZero() {
			ev.Created = v.Created.UTC().Format(time.DateOnly)
		}
		out.EscrowVersions = append(out.EscrowVersions, ev)
	}
	for _, p := range st.Pending {
		out.Pending = append(out.Pending, viewRequest(p))
	}
	return out, nil
}

// ceremonyApprove: POST /v1/ceremony/requests/{id}/approve.
func (s *Server) ceremonyApprove(ctx context.Context, rq *request) (any, error) {
	id := clip(rq.PathValue("id"))
	c, o, err := s.officer(rq)
	if err != nil {
		return nil, s.recorded(ctx, rq, "ceremony.approve", "request "+id, err)
	}
	var in api.Approval
	if err := decodeJSON(rq.Request, &in); err != nil {
		return nil, s.recorded(ctx, rq, "ceremony.approve", "request "+id, err)
	}
	n, err := c.Approve(o, id, in.Hash, in.Nonce)
	detail := fmt.Sprintf("request %s sha256 %s by %s (%d approvals)", id, clip(in.Hash), o.Name, n)
	if err := s.recorded(ctx, rq, "ceremony.approve", detail, err); err != nil {
		return nil, err
	}
	p, err := c.Get(id)
	if err != nil {
		return nil, err
	}
	return viewRequest(p), nil
}

// ceremonyShare: POST /v1/ceremony/requests/{id}/shares. The share must be
// the caller's own (the officer it names): a share of the backup's KEK for
// a restore, an SO PIN share for a backup. It is never logged.
func (s *Server) ceremonyShare(ctx context.Context, rq *request) (any, error) {
	id := clip(rq.PathValue("id"))
	c, o, err := s.officer(rq)
	if err != nil {
		return nil, s.recorded(ctx, rq, "ceremony.share", "request "+id, err)
	}
	var in api.ShareInput
	err = decodeJSON(rq.Request, &in)
	b := []byte(in.Share)
	in.Share = ""
	defer clear(b)
	detail := "request " + id + " share by " + o.Name
	var sub ceremony.Submitted
	if err == nil {
		sub, err = c.SubmitShare(o, id, b)
	}
	if sub.Parsed {
		detail = fmt.Sprintf("request %s %s %d of set %s by %s", id, sub.Kind, sub.Index, sub.BackupID, o.Name)
	}
	if err := s.recorded(ctx, rq, "ceremony.share", detail, err); err != nil {
		return nil, err
	}
	return api.ShareAccepted{Request: id, Shares: sub.Count, Threshold: sub.Set.Threshold, Kind: sub.Set.Kind.String()}, nil
}

// ceremonyFetch: GET /v1/ceremony/requests/{id}/outputs/{name}. Output
// files are 0600 in the daemon user's directory; an officer fetches a
// share file only if it is theirs, the manifest and the transcript
// whatever share they hold (ceremony.Service.Fetch). Every fetch is an
// access-log entry.
func (s *Server) ceremonyFetch(ctx context.Context, rq *request) (any, error) {
	id, name := clip(rq.PathValue("id")), clip(rq.PathValue("name"))
	detail := fmt.Sprintf("request %s output %s", id, name)
	c, o, err := s.officer(rq)
	if err != nil {
		return nil, s.recorded(ctx, rq, "ceremony.fetch", detail, err)
	}
	data, err := c.Fetch(o, id, name)
	if err := s.recorded(ctx, rq, "ceremony.fetch", detail+" by "+o.Name, err); err != nil {
		return nil, err
	}
	return api.Output{Request: id, Name: name, SHA256: sha256Hex(data), Data: data}, nil
}

func viewOutput(f ceremony.OutputFile) api.OutputFile {
	return api.OutputFile{Name: f.Name, Path: f.Path, SHA256: f.SHA256, Holder: f.Holder}
}

// ceremonyExecute returns the handler running an approved request of kind.
func (s *Server) ceremonyExecute(kind string) handler {
	return func(ctx context.Context, rq *request) (any, error) {
		op := "ceremony." + kind
		c, o, err := s.officer(rq)
		if err != nil {
			return nil, s.recorded(ctx, rq, op, "", err)
		}
		var in api.Execute
		if err := decodeJSON(rq.Request, &in); err != nil {
			return nil, s.recorded(ctx, rq, op, "", err)
		}
		id := clip(in.Request)
		cl, err := c.Claim(ctx, kind, id)
		detail := "request " + id
		if err == nil {
			detail = fmt.Sprintf("request %s sha256 %s executed by %s", id, cl.Request.Hash(), o.Name)
		}
		// The decision, durable before the token is touched.
		if err := s.recorded(ctx, rq, op, detail, err); err != nil {
			if cl != nil {
				cl.Abort()
			}
			return nil, err
		}
		res, err := c.Run(ctx, cl)
		if err != nil {
			if errors.Is(err, keys.ErrNoDaemonKeys) || errors.Is(err, hsm.ErrPINFile) {
				s.d.Log.Error("ceremony failed", "op", op, "request", cl.Request.ID, "err", err)
			}
			return nil, s.recorded(ctx, rq, op, "request "+cl.Request.ID+" failed", err)
		}
		out := &api.Executed{Request: cl.Request.ID, Kind: kind, KCV: res.KCV, BackupID: res.BackupID, Transcript: viewOutput(res.Transcript)}
		for _, f := range res.Fingerprints {
			out.Fingerprints = append(out.Fingerprints, api.Fingerprint{Label: f.Label, SHA256: f.SHA256, Words: f.Words, Created: f.Created})
		}
		for _, f := range res.Outputs {
			out.Outputs = append(out.Outputs, viewOutput(f))
		}
		detail = fmt.Sprintf("request %s transcript sha256 %s %s", cl.Request.ID, out.Transcript.SHA256, out.Transcript.Path)
		if err := s.recorded(ctx, rq, "ceremony.transcript", detail, nil); err != nil {
			return nil, err
		}
		return out, nil
	}
}

// requireGenesis refuses audit decrypts until genesis has run on the token.
func (s *Server) requireGenesis(ctx context.Context) error {
	ok, err := s.d.Keys.GenesisDone(ctx)
	if err != nil {
		return err
	}
	if !ok {
		return keys.ErrNoGenesis
	}
	return nil
}
