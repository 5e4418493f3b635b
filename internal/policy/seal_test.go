package policy

import (
	"errors"
	"strings"
	"testing"
)

func TestAuthorizeSeal(t *testing.T) {
	t.Parallel()
	p := mustParse(t, doc(stdPurposes, `
		{"name": "app", "users": ["daemon"], "roles": ["application"],
		 "act_as": [{"participants": ["client-*", "miner-*"], "purposes": ["settlement"]}],
		 "seal_for": [{"participants": ["miner-*"]},
		              {"participants": ["client-1"], "transactions": ["tx-2024-*", "special"]}]},
		{"name": "reader", "users": ["bin"], "roles": ["application"],
		 "act_as": [{"participants": ["client-*"], "purposes": ["settlement"]}]},
		{"name": "ops", "users": ["root"], "roles": ["admin"]}`))
	app := Principal{Name: "app"}
	tests := []struct {
		name         string
		pr           Principal
		tx           string
		participants []string
		want         error
	}{
		{"wildcard participant, any transaction", app, "anything", []string{"miner-1", "miner-2"}, nil},
		{"participant with transaction prefix", app, "tx-2024-7", []string{"client-1", "miner-1"}, nil},
		{"participant with exact transaction", app, "special", []string{"client-1"}, nil},
		{"transaction outside the prefix", app, "tx-2023-7", []string{"client-1"}, ErrSealDenied},
		{"exact transaction is not a prefix", app, "special-2", []string{"client-1"}, ErrSealDenied},
		{"one participant outside the grant", app, "tx-2024-7", []string{"miner-1", "client-2"}, ErrSealDenied},
		{"act_as does not grant sealing", Principal{Name: "reader"}, "tx-1", []string{"client-1"}, ErrSealDenied},
		{"no application role", Principal{Name: "ops"}, "tx-1", []string{"miner-1"}, ErrDenied},
		{"unknown principal", Principal{Name: "ghost"}, "tx-1", []string{"miner-1"}, ErrDenied},
	}
	for _, tt := range tests {
		err := p.AuthorizeSeal(tt.pr, tt.tx, tt.participants)
		if tt.want == nil {
			if err != nil {
				t.Errorf("%s: %v", tt.name, err)
			}
			continue
		}
		if !errors.Is(err, tt.want) || !errors.Is(err, ErrDenied) {
			t.Errorf("%s: err = %v; want %v (and ErrDenied)", tt.name, err, tt.want)
		}
	}
	var nilp *Policy
	if err := nilp.AuthorizeSeal(app, "tx-1", []string{"miner-1"}); !errors.Is(err, ErrDenied) {
		t.Errorf("nil policy: %v", err)
	}
}

func TestParseSealGrantErrors(t *testing.T) {
	t.Parallel()
	seal := func(roles, g string) string {
		return doc(stdPurposes, `{"name": "app", "users": ["root"], "roles": [`+roles+`], "seal_for": [`+g+`]}`)
	}
	tests := []struct{ name, js, want string }{
		{"needs application", seal(`"admin"`, `{"participants": ["x"]}`), `principals[0].seal_for: seal grants need role "application"`},
		{"unknown field", seal(`"application"`, `{"participants": ["x"], "purposes": ["settlement"]}`), "principals[0].seal_for[0].purposes: unknown field"},
		{"no participants", seal(`"application"`, `{"transactions": ["t"]}`), "principals[0].seal_for[0].participants: required"},
		{"bad participant", seal(`"application"`, `{"participants": ["a b"]}`), `principals[0].seal_for[0].participants[0]: invalid participant id "a b"`},
		{"empty transactions", seal(`"application"`, `{"participants": ["x"], "transactions": []}`), "principals[0].seal_for[0].transactions: must not be empty"},
		{"bad transaction", seal(`"application"`, `{"participants": ["x"], "transactions": ["a@b"]}`), `principals[0].seal_for[0].transactions[0]: invalid transaction id "a@b"`},
		{"star in the middle", seal(`"application"`, `{"participants": ["x"], "transactions": ["a*b"]}`), `invalid transaction id "a*b"`},
	}
	for _, tt := range tests {
		_, err := Parse([]byte(tt.js))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v; want %q", tt.name, err, tt.want)
		}
	}
}
