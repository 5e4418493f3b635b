package server

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"custody/internal/api"
)

// fastTargets are the types decodeFast knows, each as a fresh zero value.
var fastTargets = []func() any{
	func() any { return new(api.DecryptRequest) },
	func() any { return new(api.Batch[api.DecryptRequest]) },
}

// TestDecodeFastTakesClientRequests: what internal/client sends (json.Marshal
// of the request types) is in the plain form, so the fast path is the one
// production requests take.
func TestDecodeFastTakesClientRequests(t *testing.T) {
	reqs := []api.DecryptRequest{
		{Envelope: "djIAAQ-_x", As: "bank-a", Purpose: "settlement"},
		{Envelope: "djIAAQ", As: "bank-a", Purpose: "audit", Fields: []string{"amount", "iban"}, TransactionID: "tx-1"},
		{Envelope: "djIAAQ", As: "bank-a", Purpose: "p", Fields: []string{}},
	}
	for _, in := range reqs {
		body, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		var got api.DecryptRequest
		if !decodeFast(body, &got) {
			t.Errorf("decodeFast refused the client's form %s", body)
			continue
		}
		want := in
		if len(want.Fields) == 0 {
			want.Fields = nil // omitempty: not sent
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("decodeFast(%s) = %+v, want %+v", body, got, want)
		}
	}
	body, err := json.Marshal(api.Batch[api.DecryptRequest]{Items: reqs})
	if err != nil {
		t.Fatal(err)
	}
	var b api.Batch[api.DecryptRequest]
	if !decodeFast(body, &b) || len(b.Items) != len(reqs) {
		t.Errorf("decodeFast refused the client's batch form or lost items: %d of %d", len(b.Items), len(reqs))
	}
}

// TestDecodeFastDefers: bodies outside the plain form go to encoding/json
// (false, v untouched), so its answer stays the contract: case-folded keys
// and escapes are accepted there, unknown and repeated keys are not.
func TestDecodeFastDefers(t *testing.T) {
	for _, body := range []string{
		`{"Envelope":"e","as":"a","purpose":"p"}`,
		`{"envelope":"e\u0041","as":"a","purpose":"p"}`,
		`{"envelope":"e","as":"a","purpose":"p","extra":1}`,
		`{"envelope":"e","envelope":"f"}`,
		`{"envelope":"e","fields":null}`,
		`{"envelope":"é"}`,
		`{"envelope":"e"} {}`,
		`{"envelope":"e",}`,
		`[]`,
		``,
	} {
		v := api.DecryptRequest{As: "untouched"}
		if decodeFast([]byte(body), &v) {
			t.Errorf("decodeFast accepted %s", body)
		}
		if v.As != "untouched" {
			t.Errorf("decodeFast(%s) changed v on refusal: %+v", body, v)
		}
	}
}

// FuzzDecodeFast is differential: whatever decodeFast accepts,
// decodeStrict (decodeJSON's fallback) accepts too and decodes to
// the same value; what it refuses it leaves untouched.
func FuzzDecodeFast(f *testing.F) {
	for _, s := range []string{
		`{"envelope":"djIAAQ","as":"bank-a","purpose":"settlement"}`,
		`{"envelope":"e","as":"a","purpose":"p","fields":["amount","iban"],"transaction_id":"tx"}`,
		` { "fields" : [ ] } `,
		`{"items":[{"envelope":"e","as":"a","purpose":"p"},{"fields":["x"]}]}`,
		`{"items":[]}`,
		`{}`,
		`{"Envelope":"e"}`,
		`{"envelope":"a\"b"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, fresh := range fastTargets {
			fast := fresh()
			if !decodeFast(body, fast) {
				if !reflect.DeepEqual(fast, fresh()) {
					t.Fatalf("decodeFast(%q) refused but changed v: %+v", body, fast)
				}
				continue
			}
			slow := fresh()
			if err := decodeStrict(body, slow); err != nil {
				t.Fatalf("decodeFast accepted %q, encoding/json refuses it: %v", body, err)
			}
			if !reflect.DeepEqual(fast, slow) {
				t.Fatalf("decodeFast(%q) = %+v, encoding/json = %+v", body, fast, slow)
			}
		}
	})
}

// BenchmarkDecodeDecryptRequest: a warm decrypt's body (a 2 KB envelope
// text) through decodeFast and through decodeStrict (encoding/json).
func BenchmarkDecodeDecryptRequest(b *testing.B) {
	body, err := json.Marshal(api.DecryptRequest{
		Envelope: string(bytes.Repeat([]byte("djIAAQ-_"), 256)),
		As:       "bank-a", Purpose: "settlement", TransactionID: "tx-0001",
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var v api.DecryptRequest
			if !decodeFast(body, &v) {
				b.Fatal("refused")
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var v api.DecryptRequest
			if err := decodeStrict(body, &v); err != nil {
				b.Fatal(err)
			}
		}
	})
}
