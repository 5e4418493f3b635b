// Package client is custodyd's Go client: one http.Client over the
// daemon's Unix socket, one typed method per route with the wire types of
// package api, the daemon's refusals as *api.Error, and the streaming
// rewrap as an iterator. custodyctl is built on it.
//
// The daemon knows the caller by the socket's peer credentials, so a
// Client acts as the Unix user of its process; there is nothing to log in
// with. Each method's ctx bounds the whole call, reading the answer
// included. A Client is safe for concurrent use.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"

	"custody/internal/api"
)

// ErrUnreachable is returned (wrapped, with the dial error) when the
// daemon's socket cannot be reached: not running, another path, or a
// directory the caller may not enter.
var ErrUnreachable = errors.New("cannot reach custodyd")

// maxResponse bounds one answer read into memory (a batch of the daemon's
// largest, limits.max_batch_items envelopes, fits many times over).
const maxResponse = 512 << 20

// maxIdleConns is how many idle connections a Client keeps for reuse.
const maxIdleConns = 64

// Client calls one daemon.
type Client struct {
	socket string
	hc     *http.Client
}

// New returns a client of the daemon listening on the Unix socket at
// path. Nothing is dialed until the first call.
func New(socket string) *Client {
	return &Client{socket: socket, hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		},
		// Concurrent callers keep their connections (net/http's default
		// keeps 2 idle, so a third caller would dial every request); the
		// daemon bounds them per Unix user (limits.max_connections_per_caller).
		MaxIdleConnsPerHost: maxIdleConns,
	}}}
}

// Socket is the path the client dials.
func (c *Client) Socket() string { return c.socket }

// do sends one request (in JSON-encoded unless nil) and decodes a 200
// answer into out. Any other answer is the daemon's *api.Error when it
// sent one.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return err
		}
	}
	return c.doRaw(ctx, method, path, body, "application/json", out)
}

// doRaw is do with a body already encoded; the caller may clear it after.
func (c *Client) doRaw(ctx context.Context, method, path string, body []byte, contentType string, out any) error {
	resp, err := c.send(ctx, method, path, body, contentType)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return fmt.Errorf("reading the daemon's answer: %w", err)
	}
	if len(raw) > maxResponse {
		return fmt.Errorf("the daemon's answer is larger than %d bytes", maxResponse)
	}
	if err := answerError(resp, raw); err != nil {
		return err
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("unexpected answer from the daemon: %w", err)
	}
	return nil
}

func (c *Client) send(ctx context.Context, method, path string, body []byte, contentType string) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://custody"+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	if code, ok := ctx.Value(totpKey{}).(string); ok {
		req.Header.Set(api.HeaderTOTP, code)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w at %s: %v (is it running? see --socket)", ErrUnreachable, c.socket, err)
	}
	return resp, nil
}

// answerError is nil for a 200 answer, else the daemon's *api.Error, or
// the status when the body is not an error body.
func answerError(resp *http.Response, raw []byte) error {
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	var e api.ErrorBody
	if json.Unmarshal(raw, &e) == nil && e.Error != nil && e.Error.Code != "" {
		return e.Error
	}
	return fmt.Errorf("the daemon answered %s", resp.Status)
}

func call[T any](ctx context.Context, c *Client, method, path string, in any) (*T, error) {
	out := new(T)
	if err := c.do(ctx, method, path, in, out); err != nil {
		return nil, err
	}
	return out, nil
}

func batch[T, R any](ctx context.Context, c *Client, path string, items []T) ([]api.BatchResult[R], error) {
	out, err := call[api.BatchResults[R]](ctx, c, "POST", path, api.Batch[T]{Items: items})
	if err != nil {
		return nil, err
	}
	return out.Results, resultCount(len(out.Results), len(items))
}

// resultCount checks that a batch answered one result per item.
func resultCount(results, items int) error {
	if results != items {
		return fmt.Errorf("the daemon answered %d results for %d items", results, items)
	}
	return nil
}

// Health is GET /v1/health.
func (c *Client) Health(ctx context.Context) (*api.Health, error) {
	return call[api.Health](ctx, c, "GET", "/v1/health", nil)
}

// Register is POST /v1/participants: the participant's first key pair.
func (c *Client) Register(ctx context.Context, id string) (*api.Registered, error) {
	return call[api.Registered](ctx, c, "POST", "/v1/participants", api.RegisterRequest{ID: id})
}

// Participant is GET /v1/participants/{id}.
func (c *Client) Participant(ctx context.Context, id string) (*api.Participant, error) {
	return call[api.Participant](ctx, c, "GET", "/v1/participants/"+url.PathEscape(id), nil)
}

// ParticipantStatus is GET /v1/participants/{id}/status: the compliance
// status as Vault holds it (version 0: none).
func (c *Client) ParticipantStatus(ctx context.Context, id string) (*api.ParticipantStatus, error) {
	return call[api.ParticipantStatus](ctx, c, "GET", "/v1/participants/"+url.PathEscape(id)+"/status", nil)
}

// SetParticipantStatus is PUT /v1/participants/{id}/status: replace the
// whole record if in.Version is current (else status_conflict).
func (c *Client) SetParticipantStatus(ctx context.Context, id string, in api.StatusChange) (*api.StatusSet, error) {
	return call[api.StatusSet](ctx, c, "PUT", "/v1/participants/"+url.PathEscape(id)+"/status", in)
}

type totpKey struct{}

// WithTOTP returns ctx carrying the caller's current TOTP code: every call
// made with it sends the code (api.HeaderTOTP), for the requests the
// daemon's policy makes need a second factor. The code is used once.
func WithTOTP(ctx context.Context, code string) context.Context {
	return context.WithValue(ctx, totpKey{}, code)
}

// MFAEnroll is POST /v1/mfa/principals (admin): a new factor for principal;
// the answer's URI carries the seed, shown once.
func (c *Client) MFAEnroll(ctx context.Context, principal string) (*api.MFAEnrolled, error) {
	return call[api.MFAEnrolled](ctx, c, "POST", "/v1/mfa/principals", api.MFAEnroll{Principal: principal})
}

// MFASelfEnroll is POST /v1/mfa/self: the caller's own factor, pending
// until another admin confirms it; the answer's URI carries the seed,
// shown once, and Enrollment is the id the admin confirms.
func (c *Client) MFASelfEnroll(ctx context.Context) (*api.MFAEnrolled, error) {
	return call[api.MFAEnrolled](ctx, c, "POST", "/v1/mfa/self", struct{}{})
}

// MFAConfirm is POST /v1/mfa/principals/{principal}/confirm (admin, not
// principal itself): its pending enrollment id becomes its factor.
func (c *Client) MFAConfirm(ctx context.Context, principal, id string) (*api.MFAConfirmed, error) {
	return call[api.MFAConfirmed](ctx, c, "POST", "/v1/mfa/principals/"+url.PathEscape(principal)+"/confirm", api.MFAConfirm{Enrollment: id})
}

// MFAList is GET /v1/mfa/principals (admin): who is enrolled, never a seed.
func (c *Client) MFAList(ctx context.Context) (*api.MFAList, error) {
	return call[api.MFAList](ctx, c, "GET", "/v1/mfa/principals", nil)
}

// MFARevoke is DELETE /v1/mfa/principals/{principal} (admin).
func (c *Client) MFARevoke(ctx context.Context, principal string) error {
	return c.do(ctx, "DELETE", "/v1/mfa/principals/"+url.PathEscape(principal), nil, &struct{}{})
}

// Encrypt is POST /v1/transactions/encrypt.
func (c *Client) Encrypt(ctx context.Context, in api.EncryptRequest) (*api.Encrypted, error) {
	return call[api.Encrypted](ctx, c, "POST", "/v1/transactions/encrypt", in)
}

// EncryptBatch is POST /v1/transactions/encrypt/batch: one result per
// item, in order.
func (c *Client) EncryptBatch(ctx context.Context, items []api.EncryptRequest) ([]api.BatchResult[api.Encrypted], error) {
	return batch[api.EncryptRequest, api.Encrypted](ctx, c, "/v1/transactions/encrypt/batch", items)
}

// Decrypt is POST /v1/transactions/decrypt.
func (c *Client) Decrypt(ctx context.Context, in api.DecryptRequest) (*api.Decrypted, error) {
	return call[api.Decrypted](ctx, c, "POST", "/v1/transactions/decrypt", in)
}

// DecryptBatch is POST /v1/transactions/decrypt/batch.
func (c *Client) DecryptBatch(ctx context.Context, items []api.DecryptRequest) ([]api.BatchResult[api.Decrypted], error) {
	return batch[api.DecryptRequest, api.Decrypted](ctx, c, "/v1/transactions/decrypt/batch", items)
}

// AuditDecrypt is POST /v1/audit/decrypt: the escrow stanza, under a
// court order.
func (c *Client) AuditDecrypt(ctx context.Context, in api.AuditDecryptRequest) (*api.AuditDecrypted, error) {
	return call[api.AuditDecrypted](ctx, c, "POST", "/v1/audit/decrypt", in)
}

// AuditDecryptBatch is POST /v1/audit/decrypt/batch.
func (c *Client) AuditDecryptBatch(ctx context.Context, items []api.AuditDecryptRequest) ([]api.BatchResult[api.AuditDecrypted], error) {
	return batch[api.AuditDecryptRequest, api.AuditDecrypted](ctx, c, "/v1/audit/decrypt/batch", items)
}

// Inspect is POST /v1/envelopes/inspect: what an envelope's header says
// and whether its signature verifies; no key is used.
func (c *Client) Inspect(ctx context.Context, envelope string) (*api.Inspected, error) {
	return call[api.Inspected](ctx, c, "POST", "/v1/envelopes/inspect", api.InspectRequest{Envelope: envelope})
}

// Keys is GET /v1/keys.
func (c *Client) Keys(ctx context.Context) (*api.Keys, error) {
	return call[api.Keys](ctx, c, "GET", "/v1/keys", nil)
}

// Rotate is POST /v1/keys/{id}/rotate; it answers the key after.
func (c *Client) Rotate(ctx context.Context, id string) (*api.Key, error) {
	return call[api.Key](ctx, c, "POST", "/v1/keys/"+url.PathEscape(id)+"/rotate", struct{}{})
}

// Retire is POST /v1/keys/{id}/retire; it answers the key after.
func (c *Client) Retire(ctx context.Context, id string, in api.RetireRequest) (*api.Key, error) {
	return call[api.Key](ctx, c, "POST", "/v1/keys/"+url.PathEscape(id)+"/retire", in)
}

// Prove is POST /v1/keys/{id}/prove: a proof of possession (package pop
// verifies it).
func (c *Client) Prove(ctx context.Context, id string, in api.ProveRequest) (*api.Proof, error) {
	return call[api.Proof](ctx, c, "POST", "/v1/keys/"+url.PathEscape(id)+"/prove", in)
}

// Rewrap is POST /v1/envelopes/rewrap: the items' results in order, and
// how the daemon's live requests fared (nil when it has timed none).
func (c *Client) Rewrap(ctx context.Context, items []api.RewrapItem) ([]api.BatchResult[api.Rewrapped], *api.LiveLatency, error) {
	out, err := call[api.RewrapResults](ctx, c, "POST", "/v1/envelopes/rewrap", api.Batch[api.RewrapItem]{Items: items})
	if err != nil {
		return nil, nil, err
	}
	if err := resultCount(len(out.Results), len(items)); err != nil {
		return nil, nil, err
	}
	return out.Results, out.Live, nil
}

// CeremonyStatus is GET /v1/ceremony.
func (c *Client) CeremonyStatus(ctx context.Context) (*api.CeremonyStatus, error) {
	return call[api.CeremonyStatus](ctx, c, "GET", "/v1/ceremony", nil)
}

// CeremonyRequest is POST /v1/ceremony/requests: a new request.
func (c *Client) CeremonyRequest(ctx context.Context, in api.CeremonyRequestInput) (*api.CeremonyRequest, error) {
	return call[api.CeremonyRequest](ctx, c, "POST", "/v1/ceremony/requests", in)
}

// CeremonyShow is GET /v1/ceremony/requests/{id}.
func (c *Client) CeremonyShow(ctx context.Context, id string) (*api.CeremonyRequest, error) {
	return call[api.CeremonyRequest](ctx, c, "GET", "/v1/ceremony/requests/"+url.PathEscape(id), nil)
}

// CeremonyApprove is POST /v1/ceremony/requests/{id}/approve.
func (c *Client) CeremonyApprove(ctx context.Context, id string, in api.Approval) (*api.CeremonyRequest, error) {
	return call[api.CeremonyRequest](ctx, c, "POST", "/v1/ceremony/requests/"+url.PathEscape(id)+"/approve", in)
}

// CeremonyShare is POST /v1/ceremony/requests/{id}/shares with a
// decrypted share. The request body holding the share is cleared after
// the call; share itself is the caller's to clear.
func (c *Client) CeremonyShare(ctx context.Context, id string, share []byte) (*api.ShareAccepted, error) {
	body, err := json.Marshal(api.ShareInput{Share: string(share)})
	if err != nil {
		return nil, err
	}
	defer clear(body)
	out := new(api.ShareAccepted)
	if err := c.doRaw(ctx, "POST", "/v1/ceremony/requests/"+url.PathEscape(id)+"/shares", body, "application/json", out); err != nil {
		return nil, err
	}
	return out, nil
}

// CeremonyExecute is POST /v1/ceremony/{kind}: runs approved request id.
func (c *Client) CeremonyExecute(ctx context.Context, kind, id string) (*api.Executed, error) {
	return call[api.Executed](ctx, c, "POST", "/v1/ceremony/"+url.PathEscape(kind), api.Execute{Request: id})
}

// CeremonyFetch is GET /v1/ceremony/requests/{id}/outputs/{name}.
func (c *Client) CeremonyFetch(ctx context.Context, id, name string) (*api.Output, error) {
	return call[api.Output](ctx, c, "GET", "/v1/ceremony/requests/"+url.PathEscape(id)+"/outputs/"+url.PathEscape(name), nil)
}

// Checkpoint is GET /v1/log/checkpoint: the access log's latest signed
// checkpoint (verify it with auditlog before trusting it).
func (c *Client) Checkpoint(ctx context.Context) (*api.Checkpoint, error) {
	return call[api.Checkpoint](ctx, c, "GET", "/v1/log/checkpoint", nil)
}

// LogEntries is GET /v1/log/entries: entries start..end-1.
func (c *Client) LogEntries(ctx context.Context, start, end int64) (*api.LogEntries, error) {
	return call[api.LogEntries](ctx, c, "GET", fmt.Sprintf("/v1/log/entries?start=%d&end=%d", start, end), nil)
}
