package ceremony_test

import (
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"custody/internal/ceremony"
)

func TestApprovals(t *testing.T) {
	offs := newOfficers(t, 5)
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	a := &ceremony.Approvals{Now: func() time.Time { return now }}
	req, err := a.Create(offs[0].o, ceremony.KindBackup, map[string]string{"threshold": "3", "total": "5"}, 3, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := a.Create(offs[1].o, ceremony.KindBackup, nil, 3, 10*time.Minute)
	parsed, err := ceremony.ParseRequest(req.Canonical())
	if err != nil || parsed.Hash() != req.Hash() {
		t.Fatalf("ParseRequest round trip: %v", err)
	}
	if _, _, err := a.Consume(req.ID, ceremony.KindBackup); !errors.Is(err, ceremony.ErrNotApproved) {
		t.Fatalf("consume without approvals: %v", err)
	}
	for _, c := range []struct {
		name      string
		who       int
		id, h, nc string
		want      error
	}{
		{"self-approval", 0, req.ID, req.Hash(), req.Nonce, ceremony.ErrSelfApproval},
		{"other request's hash", 1, req.ID, other.Hash(), req.Nonce, ceremony.ErrRequestMismatch},
		{"other request's nonce", 1, req.ID, req.Hash(), other.Nonce, ceremony.ErrRequestMismatch},
		{"unknown id", 1, strings.Repeat("0", 32), req.Hash(), req.Nonce, ceremony.ErrUnknownRequest},
	} {
		if _, err := a.Approve(offs[c.who].o, c.id, c.h, c.nc); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	for _, i := range []int{1, 2} {
		if _, err := a.Approve(offs[i].o, req.ID, req.Hash(), req.Nonce); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Approve(offs[1].o, req.ID, req.Hash(), req.Nonce); !errors.Is(err, ceremony.ErrDuplicateApproval) {
		t.Fatalf("duplicate approval: %v", err)
	}
	if _, _, err := a.Consume(req.ID, ceremony.KindBackup); !errors.Is(err, ceremony.ErrNotApproved) {
		t.Fatalf("consume with 2 of 3: %v", err)
	}
	// After the window: refused.
	now = now.Add(11 * time.Minute)
	if _, err := a.Approve(offs[3].o, req.ID, req.Hash(), req.Nonce); !errors.Is(err, ceremony.ErrExpired) {
		t.Fatalf("late approval: %v", err)
	}
	now = now.Add(-11 * time.Minute)
	if n, err := a.Approve(offs[3].o, req.ID, req.Hash(), req.Nonce); err != nil || n != 3 {
		t.Fatalf("third approval: %d, %v", n, err)
	}
	if _, _, err := a.Consume(req.ID, ceremony.KindRestore); !errors.Is(err, ceremony.ErrUnknownRequest) {
		t.Fatalf("consume as another kind: %v", err)
	}
	got, aps, err := a.Consume(req.ID, ceremony.KindBackup)
	if err != nil || got.ID != req.ID || len(aps) != 3 {
		t.Fatalf("consume: %v", err)
	}
	if _, _, err := a.Consume(req.ID, ceremony.KindBackup); !errors.Is(err, ceremony.ErrUnknownRequest) {
		t.Fatalf("second consume: %v", err)
	}
}

func TestTranscript(t *testing.T) {
	offs := newOfficers(t, 3)
	logSK, logVK, _ := note.GenerateKey(rand.Reader, "custody-log")
	logS, _ := note.NewSigner(logSK)
	logV, _ := note.NewVerifier(logVK)
	tr := &ceremony.Transcript{Kind: "backup", RequestID: strings.Repeat("ab", 16), RequestHash: strings.Repeat("cd", 32),
		Time: time.Now(), TokenSerial: "0123456789abcdef", TokenLabel: "custody",
		Participants: [][2]string{{"o1", "requester"}, {"o2", "approver"}},
		Fingerprints: [][2]string{{"custody/escrow/v1", strings.Repeat("ef", 32)}},
		Outputs:      [][2]string{{"share-1.age", strings.Repeat("01", 32)}},
		KCV:          "a1b2c3", Deviations: []string{"officer o3 absent; o4 approved instead"}}
	text, err := tr.Text()
	if err != nil {
		t.Fatal(err)
	}
	signed, err := ceremony.SignTranscript(text, logS)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range offs[:2] {
		if signed, err = ceremony.Cosign(signed, o.signer); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ceremony.Cosign(signed, offs[0].signer); err == nil {
		t.Fatal("double co-signature accepted")
	}
	var vs []note.Verifier
	for _, o := range offs {
		vs = append(vs, o.o.Verifier())
	}
	v, err := ceremony.VerifyTranscript(signed, logV, vs, 2)
	if err != nil || len(v.Cosigners) != 2 || v.Transcript.KCV != "a1b2c3" {
		t.Fatalf("verify: %+v, %v", v, err)
	}
	if _, err := ceremony.VerifyTranscript(signed, logV, vs, 3); !errors.Is(err, ceremony.ErrTranscript) {
		t.Fatalf("too few cosigners: %v", err)
	}
	// One byte changed anywhere in the text: refused.
	for i := 0; i < len(text); i += 7 {
		bad := []byte(string(signed))
		bad[i] ^= 0x01
		if _, err := ceremony.VerifyTranscript(bad, logV, vs, 2); err == nil {
			t.Fatalf("byte %d changed: verified", i)
		}
	}
	// Without the log key's signature: refused.
	only, _ := ceremony.SignTranscript(text, offs[0].signer)
	if _, err := ceremony.VerifyTranscript(only, logV, vs, 0); !errors.Is(err, ceremony.ErrTranscript) {
		t.Fatalf("no log signature: %v", err)
	}
}

func TestFingerprintWords(t *testing.T) {
	seen := map[string]bool{}
	for _, w := range ceremony.Words {
		if w == "" || seen[w] {
			t.Fatalf("word list: empty or duplicate %q", w)
		}
		seen[w] = true
	}
	w := strings.Fields(ceremony.FingerprintWords([]byte("x")))
	// SHA-256("x") starts 2d 71 16 42.
	if len(w) != 32 || w[0] != ceremony.Words[0x2d] || w[1] != ceremony.Words[0x71] {
		t.Fatalf("FingerprintWords = %v", w[:2])
	}
	if ceremony.Fingerprint([]byte("x"))[:8] != "2d711642" {
		t.Fatal("Fingerprint")
	}
}
