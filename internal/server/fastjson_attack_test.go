package server_test

import (
	"os"
	"path/filepath"
	"testing"

	"custody/internal/api"
)

// TestDecryptBodyFormsAsApplication is the attack on the two decoders (threat
// model K12): the application user, through the socket, may act as miner-*
// for settlement only. It sends decrypt bodies that a careless fast path
// would read differently from encoding/json: a repeated or case-folded
// "as" whose first spelling is the participant it may act as and whose
// last is one it may not, an escaped participant, trailing data, an
// unknown key. Each gets encoding/json's answer: the last value counts
// (denied), the escape decodes (allowed), the rest is bad_request.
func TestDecryptBodyFormsAsApplication(t *testing.T) {
	h := newHarness(t)
	h.register("client-1", "miner-1")
	env := h.seal("tx-forms", "client-1", "miner-1")
	exe := filepath.Join(binDir, "forms.test")
	if err := copyFile(os.Args[0], exe); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(exe)
	for _, tc := range []struct {
		name, body string
		status     int
		code       string
	}{
		{"plain", `{"envelope":"` + env + `","as":"miner-1","purpose":"settlement"}`, 200, ""},
		{"escaped participant", `{"envelope":"` + env + `","as":"miner\u002d1","purpose":"settlement"}`, 200, ""},
		{"repeated as, last not allowed", `{"envelope":"` + env + `","as":"miner-1","purpose":"settlement","as":"client-1"}`, 403, api.CodeNotParticipant},
		{"case-folded as, last not allowed", `{"envelope":"` + env + `","as":"miner-1","purpose":"settlement","As":"client-1"}`, 403, api.CodeNotParticipant},
		{"trailing data", `{"envelope":"` + env + `","as":"miner-1","purpose":"settlement"} {}`, 400, api.CodeBadRequest},
		{"unknown key", `{"envelope":"` + env + `","as":"miner-1","purpose":"settlement","as_root":true}`, 400, api.CodeBadRequest},
	} {
		st, code := h.rawAs(t, appUser, exe, rawRequest{Method: "POST", Path: "/v1/transactions/decrypt", Body: tc.body,
			Headers: map[string]string{"Content-Type": "application/json"}})
		if st != tc.status || code != tc.code {
			t.Errorf("%s: %d %q, want %d %q", tc.name, st, code, tc.status, tc.code)
		}
	}
}
