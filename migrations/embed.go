// Package migrations holds pgrelay's versioned schema changes, embedded so the
// binaries need no checkout. Files are NNNN_name.up.sql with a matching
// NNNN_name.down.sql.
package migrations

import "embed"

// FS holds the versioned migration files.
//
//go:embed *.sql
var FS embed.FS
