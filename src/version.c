/*-------------------------------------------------------------------------
 *
 * version.c
 *	  The library against an older schema.
 *
 *	  After a new dlq.so is installed, a database keeps the schema of the
 *	  version it was created or last updated with until someone runs ALTER
 *	  EXTENSION dlq UPDATE.  Functions whose behaviour did not change keep
 *	  working there; a code path that needs an object the older schema lacks
 *	  calls dlq_require_current_schema() first and fails with a clear error
 *	  and a hint instead of "column does not exist".  The worker asks
 *	  dlq_schema_current() each round and waits for the update.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"

#include "dlq.h"
#include "version.h"

/*
 * dlq.messages of the database whose schema was found current.  A new
 * CREATE EXTENSION makes a new table, so an older version installed after a
 * DROP EXTENSION in the same session is noticed; an update only moves
 * forward, so a current schema stays current.
 */
static Oid	current_messages_relid = InvalidOid;

/* extversion of dlq in this database (palloc'd), or NULL when not installed. */
char *
dlq_installed_version(void)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	char	   *version = NULL;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum("dlq"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			version = text_to_cstring(DatumGetTextPP(d));
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return version;
}

/* Is the installed schema the one this library was built for? */
bool
dlq_schema_current(void)
{
	Oid			relid = dlq_messages_relid();
	char	   *version;

	if (relid == current_messages_relid)
		return true;
	version = dlq_installed_version();
	if (version == NULL || strcmp(version, DLQ_EXTVERSION) != 0)
		return false;
	current_messages_relid = relid;
	return true;
}

/* Fail clearly unless the schema is current. */
void
dlq_require_current_schema(void)
{
	char	   *version;

	if (dlq_schema_current())
		return;
	version = dlq_installed_version();
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("extension \"dlq\" is at version %s but its library is version %s",
					version ? version : "(none)", DLQ_EXTVERSION),
			 errhint("Run ALTER EXTENSION dlq UPDATE.")));
}

/*
 * The SQL of a statement for the installed schema: the parts between "[["
 * and "]]" are kept on the current schema and left out on an older one.
 * Statements on dlq.messages mark what needs 1.1 (its slot column) this
 * way, so that a 1.0 schema is still served until ALTER EXTENSION UPDATE;
 * a statement prepared for 1.0 still works after the update.
 */
char *
dlq_schema_sql(const char *sql)
{
	bool		current = strstr(sql, "[[") == NULL || dlq_schema_current();
	StringInfoData out;
	const char *p = sql;

	initStringInfo(&out);
	while (*p)
	{
		const char *open = strstr(p, "[[");
		const char *close;

		if (open == NULL)
		{
			appendStringInfoString(&out, p);
			break;
		}
		close = strstr(open, "]]");
		if (close == NULL)
			elog(ERROR, "unterminated \"[[\" in \"%s\"", sql);
		appendBinaryStringInfo(&out, p, open - p);
		if (current)
			appendBinaryStringInfo(&out, open + 2, close - open - 2);
		p = close + 2;
	}
	return out.data;
}
