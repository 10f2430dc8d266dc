// The AAD context a token is bound to, byte-identical to Python's
// keyturn._core.context (docs/FORMAT.md, "Context").

/** `table.column`: a column-bound value's context. */
export function columnContext(table, column) {
  return `${table}.${column}`;
}

/**
 * `table.column#<key>`: a row-bound value's context, the primary key's parts
 * joined by "," with every "\" and "," inside a part escaped by a backslash.
 */
export function rowContext(table, column, pk) {
  const parts = (Array.isArray(pk) ? pk : [pk]).map((part) =>
    String(part).replace(/\\/g, "\\\\").replace(/,/g, "\\,"),
  );
  return `${table}.${column}#${parts.join(",")}`;
}

/** A field inside a JSON column: the column's (or row's) context, then the field's path. */
export function fieldContext(context, path) {
  return context + path;
}
