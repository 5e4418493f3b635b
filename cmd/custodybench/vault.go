package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// vault is Vault's transit engine over loopback HTTP, with a file audit
// device when one is asked for: what a custody user would otherwise run.
type vault struct {
	addr, token string
	hc          *http.Client
	cold, warm  []string // ciphertexts
	plaintext   string   // base64 of confidential
}

const transitKey = "custody-bench"

func newVault(ctx context.Context, addr, token, auditFile string, clients int) (*vault, error) {
	v := &vault{addr: strings.TrimRight(addr, "/"), token: token, plaintext: base64.StdEncoding.EncodeToString(confidential),
		hc: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients + 4}}}
	if err := v.call(ctx, "POST", "sys/mounts/transit", map[string]any{"type": "transit"}, nil); err != nil && !strings.Contains(err.Error(), "already in use") {
		return nil, err
	}
	if err := v.call(ctx, "POST", "transit/keys/"+transitKey, map[string]any{"type": "aes256-gcm96"}, nil); err != nil {
		return nil, err
	}
	if auditFile != "" {
		err := v.call(ctx, "PUT", "sys/audit/file", map[string]any{"type": "file", "options": map[string]string{"file_path": auditFile}}, nil)
		if err != nil && !strings.Contains(err.Error(), "already in use") {
			return nil, err
		}
	}
	return v, nil
}

func (*vault) name() string { return "vault" }

// call sends one request to /v1/path and decodes the answer's data into out.
func (v *vault) call(ctx context.Context, method, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, method, v.addr+"/v1/"+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("X-Vault-Token", v.token)
	resp, err := v.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("vault %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(raw))
	}
	if out == nil {
		return nil
	}
	var wrap struct {
		Data json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(raw, &wrap); err != nil {
		return err
	}
	return json.Unmarshal(wrap.Data, out)
}

type transitItem struct {
	Plaintext  string `json:"plaintext,omitempty"`
	Ciphertext string `json:"ciphertext,omitempty"`
	Error      string `json:"error,omitempty"`
}

type transitBatch struct {
	Results []transitItem `json:"batch_results"`
}

func (v *vault) batch(ctx context.Context, op string, in []transitItem) ([]transitItem, error) {
	var out transitBatch
	if err := v.call(ctx, "POST", "transit/"+op+"/"+transitKey, map[string]any{"batch_input": in}, &out); err != nil {
		return nil, err
	}
	if len(out.Results) != len(in) {
		return nil, fmt.Errorf("transit %s: %d results for %d items", op, len(out.Results), len(in))
	}
	for _, r := range out.Results {
		if r.Error != "" {
			return nil, fmt.Errorf("transit %s: %s", op, r.Error)
		}
	}
	return out.Results, nil
}

func (v *vault) prepare(ctx context.Context, n int, progress io.Writer) error {
	seal := func(n int) ([]string, error) {
		var out []string
		for len(out) < n {
			in := make([]transitItem, min(1000, n-len(out)))
			for k := range in {
				in[k].Plaintext = v.plaintext
			}
			res, err := v.batch(ctx, "encrypt", in)
			if err != nil {
				return nil, err
			}
			for _, r := range res {
				out = append(out, r.Ciphertext)
			}
			fmt.Fprintf(progress, "\r  %d/%d", len(out), n)
		}
		fmt.Fprintln(progress)
		return out, nil
	}
	var err error
	if v.cold, err = seal(n); err != nil {
		return err
	}
	v.warm, err = seal(warmSet)
	return err
}

func (v *vault) do(ctx context.Context, op string, i int) (int, error) {
	switch op {
	case "decrypt-cold", "decrypt-warm":
		c := v.warm[i%len(v.warm)]
		if op == "decrypt-cold" {
			c = v.cold[i%len(v.cold)]
		}
		var out transitItem
		err := v.call(ctx, "POST", "transit/decrypt/"+transitKey, transitItem{Ciphertext: c}, &out)
		if err == nil && out.Plaintext != v.plaintext {
			err = fmt.Errorf("transit decrypt: wrong plaintext")
		}
		return 1, err
	case "encrypt":
		var out transitItem
		return 1, v.call(ctx, "POST", "transit/encrypt/"+transitKey, transitItem{Plaintext: v.plaintext}, &out)
	case "batch-decrypt-cold", "batch-decrypt-warm":
		in := make([]transitItem, batchSize)
		for k := range in {
			if op == "batch-decrypt-cold" {
				in[k].Ciphertext = v.cold[(i+k)%len(v.cold)]
			} else {
				in[k].Ciphertext = v.warm[k%len(v.warm)]
			}
		}
		_, err := v.batch(ctx, "decrypt", in)
		return batchSize, err
	case "batch-encrypt":
		in := make([]transitItem, batchSize)
		for k := range in {
			in[k].Plaintext = v.plaintext
		}
		_, err := v.batch(ctx, "encrypt", in)
		return batchSize, err
	}
	return 0, fmt.Errorf("unknown operation %q", op)
}
