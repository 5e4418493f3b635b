package main

import (
	"fmt"
	"log/slog"
	"os"

	"custody/hsm"
	"custody/internal/ceremony"
	"custody/internal/config"
	"custody/internal/server"
)

// loadCeremonies reads the officers file of cfg.Ceremony; without one the
// ceremony routes answer ceremony_unavailable (nil).
func loadCeremonies(cfg config.Config, token *hsm.Token, log *slog.Logger) (*server.Ceremonies, error) {
	c := cfg.Ceremony
	if c.OfficersFile == "" {
		log.Warn("no ceremony.officers_file in the configuration: escrow key ceremonies are refused")
		return nil, nil
	}
	data, err := os.ReadFile(c.OfficersFile)
	if err != nil {
		return nil, fmt.Errorf("ceremony.officers_file: %w", err)
	}
	offs, err := ceremony.ParseOfficers(data, nil)
	if err != nil {
		return nil, fmt.Errorf("ceremony.officers_file %s: %w", c.OfficersFile, err)
	}
	if err := os.MkdirAll(c.OutputDir, 0o755); err != nil {
		return nil, fmt.Errorf("ceremony.output_dir: %w", err)
	}
	log.Info("escrow key ceremonies enabled", "officers", len(offs.List), "output_dir", c.OutputDir)
	return &server.Ceremonies{Officers: offs, SOPINFile: c.SOPINFile, OutputDir: c.OutputDir, Device: token,
		LogOrigin: cfg.AccessLog.Origin, LogKeyLabel: cfg.AccessLog.SigningKeyLabel}, nil
}
