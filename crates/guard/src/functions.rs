//! What the guard knows about functions, operators and settings by name.
//!
//! Dangerous names are matched case-insensitively and in any schema: `"PG_TERMINATE_BACKEND"` is
//! a different function to PostgreSQL, but whoever created it chose that name for a reason, and
//! a false alarm costs an approval while a miss costs the data. Safe names are matched exactly,
//! unqualified or in `pg_catalog` only: `public.lower` is someone's function, not the built-in.

use crate::Class;

/// Built-in functions that destroy, kill, reach outside the database, read server files, or run
/// SQL text given to them (which the guard cannot see).
const DESTRUCTIVE: &[&str] = &[
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_drop_replication_slot",
    "pg_replication_slot_advance",
    "pg_logical_slot_get_changes",
    "pg_logical_slot_get_binary_changes",
    "pg_replication_origin_drop",
    "pg_replication_origin_advance",
    "pg_replication_origin_session_setup",
    "pg_reload_conf",
    "pg_promote",
    "pg_rotate_logfile",
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_truncate_visibility_map",
    "lo_unlink",
    "lo_import",
    "lo_export",
    "lo_truncate",
    "lo_truncate64",
    "lo_put",
    "lowrite",
    "dblink",
    "dblink_exec",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_stat_file",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_file_sync",
    "pg_logdir_ls",
    // These run the SQL text they are given.
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "ts_stat",
];

/// Prefixes of destructive families (`dblink_connect_u`, `pg_ls_dir`, `pg_write_…`).
const DESTRUCTIVE_PREFIXES: &[&str] =
    &["dblink_", "pg_read_", "pg_write", "pg_file_", "pg_ls_", "pg_stat_reset", "pg_replication_origin_"];

/// Built-ins that change state but destroy nothing: class `write`.
const WRITES: &[&str] = &[
    "nextval",
    "setval",
    "pg_notify",
    "lo_create",
    "lo_creat",
    "lo_from_bytea",
    "lo_open",
    "lo_close",
    "pg_switch_wal",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_log_backend_memory_contexts",
    "pg_import_system_collations",
    "txid_current",
    "pg_current_xact_id",
    "pg_advisory_xact_lock",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_xact_lock",
    "pg_advisory_unlock",
    "pg_advisory_unlock_all",
];

/// Built-in functions that only read (or compute): class `read`. Deliberately not exhaustive:
/// an unlisted built-in is treated like any unknown function (policy `unknown_functions`), and
/// `safe_functions` in the policy extends this list.
const SAFE: &[&str] = &[
    // large objects: reading, and moving a descriptor's position (session state only)
    "loread",
    "lo_get",
    "lo_lseek",
    "lo_lseek64",
    "lo_tell",
    "lo_tell64",
    // aggregates and window functions
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "array_agg",
    "string_agg",
    "json_agg",
    "jsonb_agg",
    "json_object_agg",
    "jsonb_object_agg",
    "bool_and",
    "bool_or",
    "every",
    "bit_and",
    "bit_or",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "percentile_cont",
    "percentile_disc",
    "mode",
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
    // strings
    "lower",
    "upper",
    "initcap",
    "length",
    "char_length",
    "character_length",
    "octet_length",
    "bit_length",
    "substring",
    "substr",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "replace",
    "translate",
    "concat",
    "concat_ws",
    "format",
    "left",
    "right",
    "lpad",
    "rpad",
    "position",
    "strpos",
    "split_part",
    "starts_with",
    "repeat",
    "reverse",
    "ascii",
    "chr",
    "regexp_replace",
    "regexp_match",
    "regexp_matches",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "regexp_like",
    "regexp_count",
    "regexp_instr",
    "regexp_substr",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "md5",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "encode",
    "decode",
    "to_hex",
    "overlay",
    "normalize",
    "unistr",
    "string_to_array",
    "string_to_table",
    "array_to_string",
    "to_ascii",
    "convert_from",
    "convert_to",
    // numbers
    "abs",
    "round",
    "floor",
    "ceil",
    "ceiling",
    "trunc",
    "mod",
    "power",
    "pow",
    "sqrt",
    "cbrt",
    "exp",
    "ln",
    "log",
    "log10",
    "sign",
    "div",
    "pi",
    "random",
    "random_normal",
    "setseed",
    "width_bucket",
    "gcd",
    "lcm",
    "scale",
    "degrees",
    "radians",
    "sin",
    "cos",
    "tan",
    "asin",
    "acos",
    "atan",
    "atan2",
    "to_char",
    "to_number",
    "to_date",
    "to_timestamp",
    // dates and times
    "now",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "date_trunc",
    "date_part",
    "date_bin",
    "extract",
    "age",
    "make_date",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "make_interval",
    "justify_days",
    "justify_hours",
    "justify_interval",
    "isfinite",
    "timezone",
    "date_add",
    "date_subtract",
    // arrays, sets, json
    "generate_series",
    "generate_subscripts",
    "unnest",
    "array_length",
    "array_lower",
    "array_upper",
    "array_ndims",
    "array_dims",
    "array_position",
    "array_positions",
    "array_append",
    "array_prepend",
    "array_cat",
    "array_remove",
    "array_replace",
    "cardinality",
    "to_json",
    "to_jsonb",
    "row_to_json",
    "array_to_json",
    "json_build_object",
    "jsonb_build_object",
    "json_build_array",
    "jsonb_build_array",
    "json_object",
    "jsonb_object",
    "json_extract_path",
    "jsonb_extract_path",
    "json_extract_path_text",
    "jsonb_extract_path_text",
    "json_array_elements",
    "jsonb_array_elements",
    "json_array_elements_text",
    "jsonb_array_elements_text",
    "json_array_length",
    "jsonb_array_length",
    "json_each",
    "jsonb_each",
    "json_each_text",
    "jsonb_each_text",
    "json_object_keys",
    "jsonb_object_keys",
    "jsonb_set",
    "jsonb_insert",
    "jsonb_pretty",
    "jsonb_strip_nulls",
    "json_strip_nulls",
    "json_typeof",
    "jsonb_typeof",
    "jsonb_path_query",
    "jsonb_path_exists",
    "jsonb_path_match",
    "json_populate_record",
    "jsonb_populate_record",
    "json_to_record",
    "jsonb_to_record",
    "json_to_recordset",
    "jsonb_to_recordset",
    // information about the session and the database
    "version",
    "current_setting",
    "current_database",
    "current_schema",
    "current_schemas",
    "current_user",
    "session_user",
    "pg_backend_pid",
    "pg_typeof",
    "pg_size_pretty",
    "pg_size_bytes",
    "pg_relation_size",
    "pg_total_relation_size",
    "pg_table_size",
    "pg_indexes_size",
    "pg_database_size",
    "pg_column_size",
    "pg_get_viewdef",
    "pg_get_functiondef",
    "pg_get_indexdef",
    "pg_get_constraintdef",
    "pg_get_triggerdef",
    "pg_get_expr",
    "pg_get_userbyid",
    "pg_get_serial_sequence",
    "format_type",
    "obj_description",
    "col_description",
    "shobj_description",
    "has_table_privilege",
    "has_column_privilege",
    "has_schema_privilege",
    "has_database_privilege",
    "has_function_privilege",
    "has_sequence_privilege",
    "pg_has_role",
    "pg_table_is_visible",
    "pg_postmaster_start_time",
    "pg_conf_load_time",
    "pg_is_in_recovery",
    "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn",
    "pg_last_wal_receive_lsn",
    "pg_last_wal_replay_lsn",
    "pg_last_xact_replay_timestamp",
    "pg_wal_lsn_diff",
    "pg_walfile_name",
    "pg_blocking_pids",
    "pg_is_other_temp_schema",
    "pg_my_temp_schema",
    "inet_client_addr",
    "inet_client_port",
    "inet_server_addr",
    "inet_server_port",
    "pg_stat_get_activity",
    "pg_encoding_to_char",
    "pg_client_encoding",
    "pg_sleep",
    "pg_sleep_for",
    "pg_sleep_until",
    "gen_random_uuid",
    "uuidv4",
    "uuidv7",
    "coalesce",
    "nullif",
    "greatest",
    "least",
    "num_nulls",
    "num_nonnulls",
    "to_regclass",
    "to_regproc",
    "to_regtype",
    "to_tsvector",
    "to_tsquery",
    "plainto_tsquery",
    "phraseto_tsquery",
    "websearch_to_tsquery",
    "ts_rank",
    "ts_rank_cd",
    "ts_headline",
    "set_masklen",
    "host",
    "masklen",
    "netmask",
    "family",
    "hashtext",
    "xmlagg",
    "xpath",
];

/// Settings whose change is harmless for the guard's purposes: `SET` of them is class `read`.
const SAFE_SETTINGS: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "intervalstyle",
    "timezone",
    "extra_float_digits",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "transaction_timeout",
    "work_mem",
    "maintenance_work_mem",
    "temp_buffers",
    "client_min_messages",
    "bytea_output",
    "random_page_cost",
    "seq_page_cost",
    "effective_cache_size",
    "cpu_tuple_cost",
    "cpu_index_tuple_cost",
    "cpu_operator_cost",
    "jit",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "default_transaction_deferrable",
    "transaction_isolation",
    "transaction_read_only",
    "transaction_deferrable",
    "lc_messages",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "row_security",
    "geqo",
    "plan_cache_mode",
    "cursor_tuple_fraction",
    "from_collapse_limit",
    "join_collapse_limit",
    "max_parallel_workers_per_gather",
    "default_text_search_config",
    "xmlbinary",
    "xmloption",
    "array_nulls",
    "escape_string_warning",
    "quote_all_identifiers",
    "constraint_exclusion",
    "enable_partition_pruning",
    "default_statistics_target",
    "check_function_bodies",
    "statement_mem",
    "gin_fuzzy_search_limit",
    "lo_compat_privileges",
];

/// Settings that hand out identity, switch off triggers or logging (the database's own witness),
/// load code, or let damaged data be destroyed: changing them is destructive.
const DANGEROUS_SETTINGS: &[&str] = &[
    "role",
    "session_authorization",
    "session_replication_role",
    "zero_damaged_pages",
    "ignore_system_indexes",
    "ignore_checksum_failure",
    "ignore_invalid_pages",
    "allow_system_table_mods",
    "local_preload_libraries",
    "session_preload_libraries",
    "dynamic_library_path",
    "jit_provider",
    "event_triggers",
    // The gate measures writes by the transaction's statistics counters: switched off, every
    // write would count as zero rows.
    "track_counts",
];

/// Operators of the built-in types. Any other symbol is a user-defined operator, and an operator
/// is a function call in disguise.
const OPERATORS: &[&str] = &[
    "=",
    "<>",
    "!=",
    "<",
    ">",
    "<=",
    ">=",
    "+",
    "-",
    "*",
    "/",
    "%",
    "^",
    "||",
    "~~",
    "!~~",
    "~~*",
    "!~~*",
    "~",
    "!~",
    "~*",
    "!~*",
    "@>",
    "<@",
    "&&",
    "?",
    "?|",
    "?&",
    "->",
    "->>",
    "#>",
    "#>>",
    "#-",
    "@?",
    "@@",
    "@@@",
    "<<",
    ">>",
    "&",
    "|",
    "#",
    "|/",
    "||/",
    "@",
    "@-@",
    "?#",
    "?-",
    "?-|",
    "?||",
    "<->",
    "BETWEEN",
    "NOT BETWEEN",
    "BETWEEN SYMMETRIC",
    "NOT BETWEEN SYMMETRIC",
    "~>=~",
    "~<=~",
    "~>~",
    "~<~",
    "<<=",
    ">>=",
    "&<",
    "&>",
    "<<|",
    "|>>",
    "&<|",
    "|&>",
    "<^",
    ">^",
    "##",
    "<=>",
];

/// How a call to `parts` (as the parser produced it: schema-qualified or not) is classified, with
/// the reason when it is not a plain read. `unqualified_builtin` is set when the call is to a
/// safe built-in by an unqualified name (a changed `search_path` could redirect it).
pub(crate) struct FunctionVerdict {
    pub class: Class,
    pub reason: Option<String>,
    pub unqualified_builtin: bool,
    /// A function the guard does not know (policy `unknown_functions`): it may change rows, so
    /// it may only run where the gate measures what changed.
    pub unknown: bool,
}

fn in_catalog(schema: Option<&str>) -> bool {
    matches!(schema, None | Some("pg_catalog"))
}

pub(crate) fn classify_function(parts: &[String], policy: &crate::Policy) -> FunctionVerdict {
    let name = parts.last().map(String::as_str).unwrap_or("");
    let schema = if parts.len() >= 2 { Some(parts[parts.len() - 2].as_str()) } else { None };
    let written = parts.join(".");
    let lname = name.to_lowercase();
    let lwritten = written.to_lowercase();
    let dangerous_by_policy = policy.dangerous_functions.iter().any(|f| {
        let f = f.to_lowercase();
        f == lwritten || (!f.contains('.') && f == lname)
    });
    if DESTRUCTIVE.contains(&lname.as_str())
        || DESTRUCTIVE_PREFIXES.iter().any(|p| lname.starts_with(p))
        || dangerous_by_policy
    {
        return FunctionVerdict {
            class: Class::Destructive,
            reason: Some(format!(
                "calls {written}(), a function that can destroy, kill sessions, reach outside the database or run SQL the guard cannot see"
            )),
            unqualified_builtin: false,
            unknown: false,
        };
    }
    if lname == "pg_create_restore_point" {
        // Recovery to a named restore point stops at the *first* record of that name: a name
        // planted ahead of the one people will create (`before_migration`) makes a later
        // `restore --restore-point` stop early and lose what came between, reported "reached".
        return FunctionVerdict {
            class: Class::Destructive,
            reason: Some(format!(
                "calls {written}(): recovery stops at the first restore point of a name, so a name planted early makes a later restore to it lose what came between"
            )),
            unqualified_builtin: false,
            unknown: false,
        };
    }
    if policy
        .safe_functions
        .iter()
        .any(|f| *f == written || (!f.contains('.') && f == name && schema.is_none()))
    {
        return FunctionVerdict {
            class: Class::Read,
            reason: None,
            unqualified_builtin: false,
            unknown: false,
        };
    }
    if in_catalog(schema) && WRITES.contains(&name) {
        return FunctionVerdict {
            class: Class::Write,
            reason: Some(format!("calls {written}(), which changes state")),
            unqualified_builtin: schema.is_none(),
            unknown: false,
        };
    }
    if in_catalog(schema) && SAFE.contains(&name) {
        return FunctionVerdict {
            class: Class::Read,
            reason: None,
            unqualified_builtin: schema.is_none(),
            unknown: false,
        };
    }
    FunctionVerdict {
        class: policy.unknown_functions.class(),
        reason: Some(format!(
            "calls {written}(), a function the guard does not know (it may write; policy unknown_functions)"
        )),
        unqualified_builtin: false,
        unknown: true,
    }
}

/// Class of changing setting `name` (lower-cased by the caller), with the reason.
pub(crate) fn classify_setting(name: &str) -> (Class, Option<String>) {
    if DANGEROUS_SETTINGS.contains(&name) || name.starts_with("log_") || name.starts_with("pgaudit.") {
        return (
            Class::Destructive,
            Some(format!(
                "changes {name}, a setting that grants identity, disables triggers, the database's own logging or the counters the gate measures writes by, or loads code"
            )),
        );
    }
    if name == "standard_conforming_strings" {
        return (Class::Write, Some("changes how the server reads backslashes in strings: the guard reads later statements both ways until the server reports the new value".into()));
    }
    if name == "search_path" {
        return (Class::Ddl, Some("changes search_path: every later unqualified name may resolve to another schema's table or function".into()));
    }
    if SAFE_SETTINGS.contains(&name) || name.starts_with("enable_") {
        return (Class::Read, None);
    }
    (Class::Write, Some(format!("changes {name}, a setting the guard does not know to be harmless")))
}

/// The names the guard takes for built-ins when written without a schema: the functions it
/// knows (safe or writing) and the operators. A function or operator of one of these names in
/// another schema — an overload with other argument types, which PostgreSQL picks over the
/// built-in when its types match better (`lower(int)`, `= (int, text)`) — makes such calls the
/// database's own code no longer: see `Session::set_builtins_shadowed`.
pub fn builtin_names() -> (&'static [&'static str], &'static [&'static str], &'static [&'static str]) {
    (SAFE, WRITES, OPERATORS)
}

/// Whether `symbol` (an operator, possibly schema-qualified in `parts`) is a built-in operator.
pub(crate) fn builtin_operator(parts: &[String]) -> bool {
    let schema_ok = parts.len() < 2 || parts[parts.len() - 2] == "pg_catalog";
    schema_ok && parts.last().is_some_and(|s| OPERATORS.contains(&s.as_str()))
}
