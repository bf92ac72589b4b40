// Package triggers holds pgrelay's repeatable SQL definitions (functions,
// triggers, views). `migrate up` re-applies a file whenever its content
// changes, in file-name order, after all versioned migrations.
package triggers

import "embed"

// FS holds the repeatable definition files.
//
//go:embed *.sql
var FS embed.FS
