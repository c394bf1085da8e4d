/*-------------------------------------------------------------------------
 *
 * capture.c
 *	  The dlq_capture trigger, the isolate-mode intake trigger, and
 *	  re-applying captured rows to their table.
 *
 *	  dlq_capture is a BEFORE INSERT OR UPDATE ... FOR EACH ROW trigger.  It
 *	  predicts, without a subtransaction, whether the row would violate a
 *	  NOT NULL, CHECK, UNIQUE / PRIMARY KEY or FOREIGN KEY constraint of the
 *	  table, the same way the executor would check it:
 *
 *	  - NOT NULL and CHECK: the relation's own constraints, evaluated like
 *		ExecConstraints / ExecRelCheck (CHECK constraints in name order);
 *	  - UNIQUE: each immediate unique index is probed with a dirty snapshot
 *		through ExecCheckIndexConstraints, which sees rows inserted earlier
 *		in the same statement or transaction and waits for a concurrent
 *		inserter of the same key to finish; on UPDATE the row being updated
 *		is not a conflict;
 *	  - FOREIGN KEY: a probe of the parent's unique index with a dirty
 *		snapshot (or, for a partitioned parent, a prepared query run as its
 *		owner like the RI triggers), with MATCH SIMPLE / FULL null rules;
 *		skipped on UPDATE when the key did not change.
 *
 *	  A violating row is kept with the SQLSTATE, message and detail that
 *	  PostgreSQL itself would have raised, and skipped (the trigger returns
 *	  NULL), so the load goes on.  Kept rows are stored in batches: per
 *	  CAPTURE_BATCH rows, at the end of the statement (the AFTER STATEMENT
 *	  trigger dlq_attach adds calls dlq_capture too) and before commit.
 *	  Per relation, the constraint metadata is cached in a hash invalidated
 *	  by relcache callbacks; the executor state (prepared expressions, index
 *	  infos) lives for one transaction.
 *
 *	  What a diverted row records cannot be chosen by whoever fired or made
 *	  the trigger: its source_relation is the table the trigger was made on
 *	  (for a clone on a partition, the table of the trigger it was cloned
 *	  from), a row that row-level security binds is never diverted (the
 *	  policy is checked after BEFORE triggers), and the trigger refuses
 *	  dlq's own tables and the catalogs, whose rows storing would capture
 *	  again.
 *
 *	  dlq_capture_isolate is the INSTEAD OF trigger of an isolate-mode
 *	  intake view: one subtransaction per row, every error caught except a
 *	  missing privilege (the inserting role may not write the table, so its
 *	  row must not get there through a replay by one that may).
 *
 *	  dlq_reapply_row (replay.c) converts a captured payload back into the
 *	  table's row type, predicts violations with the same code and inserts
 *	  the row through SPI with the caller's privileges.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/nbtree.h"
#include "access/tableam.h"
#include "catalog/pg_am.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "optimizer/optimizer.h"
#include "partitioning/partdesc.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "capture.h"
#include "dlq.h"

#if PG_VERSION_NUM >= 170000
#define DLQ_LXID (MyProc->vxid.lxid)
#else
#define DLQ_LXID (MyProc->lxid)
#endif

/* Longest value shown in a "Failing row contains" detail, as execMain.c. */
#define CAPTURE_MAX_FIELD_LEN 64

/* One foreign key of a relation, with its prepared probe. */
typedef struct CaptureFk
{
	char	   *conname;
	Oid			pkrelid;
	char	   *pkrelname;
	Oid			pkowner;
	char		matchtype;
	int			nkeys;
	AttrNumber	fkattnums[INDEX_MAX_KEYS];
	SPIPlanPtr	plan;			/* kept; the probe when there is no index probe */

	/*
	 * Index probe of the referenced key, when the parent is a plain table
	 * whose unique index has an equality operator for the foreign key's types:
	 * index column i is compared with foreign key column idxkey[i].
	 */
	Oid			pkindex;		/* or InvalidOid: use plan */
	int			idxkey[INDEX_MAX_KEYS];
	Oid			idxproc[INDEX_MAX_KEYS];
	Oid			idxsubtype[INDEX_MAX_KEYS];
} CaptureFk;

/* Per-relation cache entry. */
typedef struct CaptureRel
{
	Oid			relid;			/* hash key */
	bool		valid;			/* metadata still matches the catalogs */
	MemoryContext cxt;			/* metadata, child of CacheMemoryContext */

	/* metadata */
	int			nnotnull;
	AttrNumber *notnull;
	int			ncheck;
	char	  **checkname;
	Expr	  **checkexpr;		/* planned, in cxt */
	int			nunique;
	Oid		   *uniqueoids;
	int			nfk;
	CaptureFk  *fks;
	bool		partitioned;

	/* replay: conversion and insert plans, prepared on first use */
	SPIPlanPtr	convert_plan;
	SPIPlanPtr	insert_plan;
	int			ninsert;
	AttrNumber *insertattnums;
	bool		fast_convert;	/* scalar columns only: convert in C */
	FmgrInfo   *infuncs;		/* per attribute, for fast_convert */
	Oid		   *ioparams;
	char	   *convkind;		/* per attribute: 'j' json(b), 'd' domain, 's' */

	/* executor state for one transaction, in a child of TopTransactionContext */
	LocalTransactionId lxid;
	EState	   *estate;
	ExprState **checkstate;
	IndexInfo **uniqueinfo;
} CaptureRel;

/* A predicted violation, in the shape of the error PostgreSQL would raise. */
typedef struct CaptureViolation
{
	int			sqlerrcode;
	char	   *message;
	char	   *detail;			/* or NULL */
	char	   *column;			/* or NULL */
	char	   *constraint;		/* or NULL */
} CaptureViolation;

static HTAB *capture_rels = NULL;

/*
 * Replay state: while dlq_reapply_row inserts a row, the capture trigger
 * does not divert it into a new message; it records the violation here for
 * dlq_reapply_row to report instead, unless the row was validated already.
 */
static bool replaying = false;
static Oid	replay_validated_relid = InvalidOid;
static CaptureViolation *replay_violation = NULL;
static MemoryContext replay_cxt = NULL;

static void
capture_relcache_callback(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	CaptureRel *entry;

	if (capture_rels == NULL)
		return;
	hash_seq_init(&status, capture_rels);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		if (relid == InvalidOid || entry->relid == relid)
			entry->valid = false;
		else
		{
			for (int i = 0; i < entry->nfk; i++)
				if (entry->fks[i].pkrelid == relid)
					entry->valid = false;
		}
	}
}

/* Free an entry's metadata; the per-transaction state dies on its own. */
static void
capture_free_entry(CaptureRel *entry)
{
	for (int i = 0; i < entry->nfk; i++)
		if (entry->fks[i].plan)
			SPI_freeplan(entry->fks[i].plan);
	if (entry->convert_plan)
		SPI_freeplan(entry->convert_plan);
	if (entry->insert_plan)
		SPI_freeplan(entry->insert_plan);
	if (entry->cxt)
		MemoryContextDelete(entry->cxt);
}

/*
 * A foreign key to a partitioned table has one pg_constraint row per
 * referenced partition too, for the actions on that side; its parent
 * constraint belongs to the same referencing table.  Only the top one is
 * checked, against the whole partitioned table.  (A foreign key cloned onto
 * a partition of the referencing table has a parent on another table, and
 * is checked.)
 */
static bool
capture_fk_is_pk_clone(Form_pg_constraint con)
{
	HeapTuple	tup;
	bool		clone;

	if (!OidIsValid(con->conparentid))
		return false;
	tup = SearchSysCache1(CONSTROID, ObjectIdGetDatum(con->conparentid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for constraint %u", con->conparentid);
	clone = ((Form_pg_constraint) GETSTRUCT(tup))->conrelid == con->conrelid;
	ReleaseSysCache(tup);
	return clone;
}

/*
 * Set up the index probe of a foreign key's parent: its unique index
 * (conindid), with the operator of each index column's family that compares
 * the index type with the foreign key column's type.  Leaves pkindex invalid
 * when some column has none; the SQL probe is used then.
 */
static void
capture_fk_index(CaptureFk *cfk, ForeignKeyCacheInfo *fk, Oid indexoid, TupleDesc tupdesc)
{
	Relation	index = index_open(indexoid, AccessShareLock);
	int			nkeyatts = IndexRelationGetNumberOfKeyAttributes(index);
	bool		ok = index->rd_rel->relam == BTREE_AM_OID && nkeyatts == fk->nkeys;

	for (int i = 0; ok && i < nkeyatts; i++)
	{
		int			k;
		Oid			fktype;
		Oid			opr;

		for (k = 0; k < fk->nkeys; k++)
			if (fk->confkey[k] == index->rd_index->indkey.values[i])
				break;
		if (k == fk->nkeys)
		{
			ok = false;
			break;
		}
		fktype = getBaseType(TupleDescAttr(tupdesc, fk->conkey[k] - 1)->atttypid);
		opr = get_opfamily_member(index->rd_opfamily[i], index->rd_opcintype[i],
								  fktype, BTEqualStrategyNumber);
		if (!OidIsValid(opr))
		{
			ok = false;
			break;
		}
		cfk->idxkey[i] = k;
		cfk->idxproc[i] = get_opcode(opr);
		cfk->idxsubtype[i] = fktype;
	}
	cfk->pkindex = ok ? indexoid : InvalidOid;
	index_close(index, AccessShareLock);
}

/*
 * Is the parent row there?  Probes the parent's unique index with a dirty
 * snapshot, like the unique check: committed rows and this transaction's
 * rows count, a row inserted by a transaction still in progress is waited
 * for.  Run without privilege checks, like the RI triggers' own query.
 */
static bool
capture_fk_probe_index(CaptureFk *fk, Datum *values)
{
	Relation	pkrel = table_open(fk->pkrelid, AccessShareLock);
	Relation	index = index_open(fk->pkindex, AccessShareLock);
	int			nkeyatts = IndexRelationGetNumberOfKeyAttributes(index);
	TupleTableSlot *slot = table_slot_create(pkrel, NULL);
	ScanKeyData keys[INDEX_MAX_KEYS];
	SnapshotData dirty;
	IndexScanDesc scan;
	bool		found;

	for (int i = 0; i < nkeyatts; i++)
		ScanKeyEntryInitialize(&keys[i], 0, i + 1, BTEqualStrategyNumber,
							   fk->idxsubtype[i], index->rd_indcollation[i],
							   fk->idxproc[i], values[fk->idxkey[i]]);
	InitDirtySnapshot(dirty);
retry:
	found = false;
	scan = index_beginscan(pkrel, index, &dirty, nkeyatts, 0);
	index_rescan(scan, keys, nkeyatts, NULL, 0);
	if (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		if (TransactionIdIsValid(dirty.xmin))
		{
			TransactionId xwait = dirty.xmin;

			index_endscan(scan);
			XactLockTableWait(xwait, pkrel, &slot->tts_tid, XLTW_None);
			goto retry;
		}
		found = true;
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(index, NoLock);
	table_close(pkrel, NoLock);
	return found;
}

/* Read the constraints of rel into a fresh entry. */
static void
capture_build_entry(CaptureRel *entry, Relation rel)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);
	TupleConstr *constr = tupdesc->constr;
	MemoryContext old;
	List	   *indexes;
	List	   *fkeys;
	ListCell   *lc;
	Oid			relid = entry->relid;

	memset(entry, 0, sizeof(CaptureRel));
	entry->relid = relid;
	/* An invalidation that arrives while we read the catalogs clears this. */
	entry->valid = true;
	entry->cxt = AllocSetContextCreate(CacheMemoryContext, "dlq capture relation",
									   ALLOCSET_SMALL_SIZES);
	MemoryContextCopyAndSetIdentifier(entry->cxt, RelationGetRelationName(rel));
	old = MemoryContextSwitchTo(entry->cxt);

	/* NOT NULL columns, generated columns excepted (computed after us). */
	entry->notnull = palloc(sizeof(AttrNumber) * tupdesc->natts);
	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);

		if (att->attnotnull && !att->attisdropped && att->attgenerated == '\0')
			entry->notnull[entry->nnotnull++] = att->attnum;
	}

	/* CHECK constraints, already in name order in the relcache. */
	if (constr && constr->num_check > 0)
	{
		entry->checkname = palloc(sizeof(char *) * constr->num_check);
		entry->checkexpr = palloc(sizeof(Expr *) * constr->num_check);
		for (int i = 0; i < constr->num_check; i++)
		{
			Expr	   *expr = stringToNode(constr->check[i].ccbin);

			if (constr->has_generated_stored)
			{
				Bitmapset  *attrs = NULL;
				bool		generated = false;
				int			k = -1;

				pull_varattnos((Node *) expr, 1, &attrs);
				while ((k = bms_next_member(attrs, k)) >= 0)
				{
					AttrNumber	attno = k + FirstLowInvalidHeapAttributeNumber;

					if (attno > 0 &&
						TupleDescAttr(tupdesc, attno - 1)->attgenerated != '\0')
						generated = true;
				}
				if (generated)
					continue;
			}
			entry->checkname[entry->ncheck] = pstrdup(constr->check[i].ccname);
			entry->checkexpr[entry->ncheck] = expression_planner(expr);
			entry->ncheck++;
		}
	}

	/* Immediate unique indexes that take inserts; exclusion ones are not ours. */
	indexes = RelationGetIndexList(rel);
	entry->uniqueoids = palloc(sizeof(Oid) * (list_length(indexes) + 1));
	foreach(lc, indexes)
	{
		Oid			indexoid = lfirst_oid(lc);
		HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(indexoid));
		Form_pg_index index;

		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for index %u", indexoid);
		index = (Form_pg_index) GETSTRUCT(tup);
		if (index->indisunique && index->indimmediate && index->indisready &&
			!index->indisexclusion)
			entry->uniqueoids[entry->nunique++] = indexoid;
		ReleaseSysCache(tup);
	}

	/* Foreign keys that are checked at once (not INITIALLY DEFERRED). */
	fkeys = RelationGetFKeyList(rel);
	entry->fks = palloc0(sizeof(CaptureFk) * (list_length(fkeys) + 1));
	foreach(lc, fkeys)
	{
		ForeignKeyCacheInfo *fk = lfirst(lc);
		HeapTuple	tup = SearchSysCache1(CONSTROID, ObjectIdGetDatum(fk->conoid));
		Form_pg_constraint con;
		CaptureFk  *cfk;
		Oid			pkindex;

		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for constraint %u", fk->conoid);
		con = (Form_pg_constraint) GETSTRUCT(tup);
		if (con->condeferred || capture_fk_is_pk_clone(con))
		{
			ReleaseSysCache(tup);
			continue;
		}
		cfk = &entry->fks[entry->nfk++];
		cfk->conname = pstrdup(NameStr(con->conname));
		cfk->matchtype = con->confmatchtype;
		cfk->pkrelid = fk->confrelid;
		cfk->pkrelname = pstrdup(get_rel_name(fk->confrelid));
		cfk->nkeys = fk->nkeys;
		memcpy(cfk->fkattnums, fk->conkey, sizeof(AttrNumber) * fk->nkeys);
		pkindex = con->conindid;
		ReleaseSysCache(tup);

		tup = SearchSysCache1(RELOID, ObjectIdGetDatum(fk->confrelid));
		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for relation %u", fk->confrelid);
		cfk->pkowner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
		ReleaseSysCache(tup);

		if (get_rel_relkind(fk->confrelid) == RELKIND_RELATION)
			capture_fk_index(cfk, fk, pkindex, tupdesc);

		/* Otherwise the SQL probe, planned now in SPI's context and kept. */
		if (!OidIsValid(cfk->pkindex))
		{
			StringInfoData sql;
			Oid			types[INDEX_MAX_KEYS];
			char		pkkind = get_rel_relkind(fk->confrelid);

			initStringInfo(&sql);
			appendStringInfo(&sql, "SELECT 1 FROM %s%s.%s x WHERE ",
							 pkkind == RELKIND_PARTITIONED_TABLE ? "" : "ONLY ",
							 quote_identifier(get_namespace_name(get_rel_namespace(fk->confrelid))),
							 quote_identifier(cfk->pkrelname));
			for (int k = 0; k < fk->nkeys; k++)
			{
				HeapTuple	optup = SearchSysCache1(OPEROID,
													ObjectIdGetDatum(fk->conpfeqop[k]));
				Form_pg_operator op;

				if (!HeapTupleIsValid(optup))
					elog(ERROR, "cache lookup failed for operator %u", fk->conpfeqop[k]);
				op = (Form_pg_operator) GETSTRUCT(optup);
				appendStringInfo(&sql, "%sx.%s OPERATOR(%s.%s) $%d",
								 k > 0 ? " AND " : "",
								 quote_identifier(get_attname(fk->confrelid, fk->confkey[k], false)),
								 quote_identifier(get_namespace_name(op->oprnamespace)),
								 NameStr(op->oprname), k + 1);
				ReleaseSysCache(optup);
				types[k] = TupleDescAttr(tupdesc, fk->conkey[k] - 1)->atttypid;
			}
			SPI_connect();
			cfk->plan = SPI_prepare(sql.data, fk->nkeys, types);
			if (cfk->plan == NULL)
				elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
			SPI_keepplan(cfk->plan);
			SPI_finish();
		}
	}

	entry->partitioned = rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE;

	MemoryContextSwitchTo(old);
	entry->lxid = InvalidLocalTransactionId;
}

/*
 * The cache entry of rel, with executor state for the current transaction.
 */
static CaptureRel *
capture_get_rel(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	CaptureRel *entry;
	bool		found;

	if (capture_rels == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(CaptureRel);
		capture_rels = hash_create("dlq capture relations", 16, &ctl,
								   HASH_ELEM | HASH_BLOBS);
		CacheRegisterRelcacheCallback(capture_relcache_callback, (Datum) 0);
	}

	entry = hash_search(capture_rels, &relid, HASH_ENTER, &found);
	if (!found)
	{
		entry->cxt = NULL;
		entry->nfk = 0;
		entry->convert_plan = entry->insert_plan = NULL;
		entry->valid = false;
	}
	if (!entry->valid)
	{
		if (found)
			capture_free_entry(entry);
		entry->nfk = 0;
		entry->cxt = NULL;
		entry->convert_plan = entry->insert_plan = NULL;
		PG_TRY();
		{
			capture_build_entry(entry, rel);
		}
		PG_CATCH();
		{
			hash_search(capture_rels, &relid, HASH_REMOVE, NULL);
			PG_RE_THROW();
		}
		PG_END_TRY();
	}

	if (entry->lxid != DLQ_LXID)
	{
		/* The previous transaction's state went with its memory. */
		MemoryContext old;

		entry->estate = NULL;
		old = MemoryContextSwitchTo(TopTransactionContext);
		entry->estate = CreateExecutorState();
		MemoryContextSwitchTo(entry->estate->es_query_cxt);
		entry->checkstate = palloc(sizeof(ExprState *) * (entry->ncheck + 1));
		for (int i = 0; i < entry->ncheck; i++)
			entry->checkstate[i] = ExecInitExpr(copyObject(entry->checkexpr[i]), NULL);
		entry->uniqueinfo = palloc(sizeof(IndexInfo *) * (entry->nunique + 1));
		for (int i = 0; i < entry->nunique; i++)
		{
			Relation	index = index_open(entry->uniqueoids[i], RowExclusiveLock);

			entry->uniqueinfo[i] = BuildIndexInfo(index);
			BuildSpeculativeIndexInfo(index, entry->uniqueinfo[i]);
			index_close(index, NoLock);
		}
		MemoryContextSwitchTo(old);
		entry->lxid = DLQ_LXID;
	}
	return entry;
}

/*
 * The "(v1, v2, ...)" description of a row, as ExecBuildSlotValueDescription
 * builds it for "Failing row contains": NULL when the user may see nothing.
 */
static char *
capture_row_description(Relation rel, TupleTableSlot *slot)
{
	Oid			relid = RelationGetRelid(rel);
	TupleDesc	tupdesc = RelationGetDescr(rel);
	StringInfoData buf;
	StringInfoData collist;
	bool		table_perm;
	bool		any_perm = false;
	bool		write_comma = false;
	bool		write_comma_collist = false;

	if (check_enable_rls(relid, InvalidOid, true) == RLS_ENABLED)
		return NULL;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '(');
	table_perm = pg_class_aclcheck(relid, GetUserId(), ACL_SELECT) == ACLCHECK_OK;
	if (table_perm)
		any_perm = true;
	else
	{
		initStringInfo(&collist);
		appendStringInfoChar(&collist, '(');
	}

	slot_getallattrs(slot);
	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);
		bool		column_perm = false;
		char	   *val;
		int			vallen;

		if (att->attisdropped)
			continue;
		if (!table_perm)
		{
			/* The user supplied the whole row, so every column counts as modified. */
			column_perm = any_perm = true;
			if (write_comma_collist)
				appendStringInfoString(&collist, ", ");
			else
				write_comma_collist = true;
			appendStringInfoString(&collist, NameStr(att->attname));
		}
		if (table_perm || column_perm)
		{
			if (slot->tts_isnull[i])
				val = "null";
			else
			{
				Oid			foutoid;
				bool		typisvarlena;

				getTypeOutputInfo(att->atttypid, &foutoid, &typisvarlena);
				val = OidOutputFunctionCall(foutoid, slot->tts_values[i]);
			}
			if (write_comma)
				appendStringInfoString(&buf, ", ");
			else
				write_comma = true;
			vallen = strlen(val);
			if (vallen <= CAPTURE_MAX_FIELD_LEN)
				appendBinaryStringInfo(&buf, val, vallen);
			else
			{
				vallen = pg_mbcliplen(val, vallen, CAPTURE_MAX_FIELD_LEN);
				appendBinaryStringInfo(&buf, val, vallen);
				appendStringInfoString(&buf, "...");
			}
		}
	}
	if (!any_perm)
		return NULL;
	appendStringInfoChar(&buf, ')');
	if (!table_perm)
	{
		appendStringInfoString(&collist, ") = ");
		appendBinaryStringInfo(&collist, buf.data, buf.len);
		return collist.data;
	}
	return buf.data;
}

/* Does the foreign key find its parent row?  Sets *v when it does not. */
static bool
capture_check_fk(Relation rel, CaptureFk *fk, TupleTableSlot *slot,
				 TupleTableSlot *oldslot, CaptureViolation *v)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);
	Datum		values[INDEX_MAX_KEYS];
	char		nulls[INDEX_MAX_KEYS];
	int			nnull = 0;
	bool		changed = (oldslot == NULL);
	bool		found;
	Oid			save_user;
	int			save_sec;
	int			ret;

	for (int k = 0; k < fk->nkeys; k++)
	{
		AttrNumber	attno = fk->fkattnums[k];
		bool		isnull;

		values[k] = slot_getattr(slot, attno, &isnull);
		nulls[k] = isnull ? 'n' : ' ';
		if (isnull)
			nnull++;
		if (!changed)
		{
			Form_pg_attribute att = TupleDescAttr(tupdesc, attno - 1);
			bool		oldnull;
			Datum		old = slot_getattr(oldslot, attno, &oldnull);

			if (isnull != oldnull ||
				(!isnull && !datumIsEqual(old, values[k], att->attbyval, att->attlen)))
				changed = true;
		}
	}

	/* An UPDATE that keeps the key needs no check, as in the RI triggers. */
	if (!changed)
		return true;
	if (nnull == fk->nkeys)
		return true;
	if (nnull > 0)
	{
		if (fk->matchtype != FKCONSTR_MATCH_FULL)
			return true;		/* MATCH SIMPLE: any NULL column passes */
		v->sqlerrcode = ERRCODE_FOREIGN_KEY_VIOLATION;
		v->message = psprintf("insert or update on table \"%s\" violates foreign key constraint \"%s\"",
							  RelationGetRelationName(rel), fk->conname);
		v->detail = pstrdup("MATCH FULL does not allow mixing of null and nonnull key values.");
		v->constraint = fk->conname;
		return false;
	}

	if (OidIsValid(fk->pkindex))
		found = capture_fk_probe_index(fk, values);
	else
	{
		/* Probe the parent as its owner, like ri_PerformCheck. */
		GetUserIdAndSecContext(&save_user, &save_sec);
		SetUserIdAndSecContext(fk->pkowner,
							   save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_NOFORCE_RLS);
		SPI_connect();
		ret = SPI_execute_plan(fk->plan, values, nulls, false, 1);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "foreign key probe failed: %s", SPI_result_code_string(ret));
		found = SPI_processed > 0;
		SPI_finish();
		SetUserIdAndSecContext(save_user, save_sec);
	}
	if (found)
		return true;

	v->sqlerrcode = ERRCODE_FOREIGN_KEY_VIOLATION;
	v->message = psprintf("insert or update on table \"%s\" violates foreign key constraint \"%s\"",
						  RelationGetRelationName(rel), fk->conname);
	v->constraint = fk->conname;
	if (pg_class_aclcheck(RelationGetRelid(rel), GetUserId(), ACL_SELECT) == ACLCHECK_OK)
	{
		StringInfoData names;
		StringInfoData vals;

		initStringInfo(&names);
		initStringInfo(&vals);
		for (int k = 0; k < fk->nkeys; k++)
		{
			Form_pg_attribute att = TupleDescAttr(tupdesc, fk->fkattnums[k] - 1);
			Oid			foutoid;
			bool		typisvarlena;

			getTypeOutputInfo(att->atttypid, &foutoid, &typisvarlena);
			appendStringInfo(&names, "%s%s", k > 0 ? ", " : "", NameStr(att->attname));
			appendStringInfo(&vals, "%s%s", k > 0 ? ", " : "",
							 OidOutputFunctionCall(foutoid, values[k]));
		}
		v->detail = psprintf("Key (%s)=(%s) is not present in table \"%s\".",
							 names.data, vals.data, fk->pkrelname);
	}
	else
		v->detail = psprintf("Key is not present in table \"%s\".", fk->pkrelname);
	return false;
}

/*
 * Would the row in slot violate a constraint of rel?  Returns false and
 * fills *v with the error PostgreSQL would raise when it would.  oldslot is
 * the row being updated (NULL for an INSERT).
 */
static bool
capture_validate(CaptureRel *entry, Relation rel, TupleTableSlot *slot,
				 TupleTableSlot *oldslot, CaptureViolation *v)
{
	ExprContext *econtext;

	memset(v, 0, sizeof(CaptureViolation));
	slot_getallattrs(slot);

	for (int i = 0; i < entry->nnotnull; i++)
	{
		AttrNumber	attno = entry->notnull[i];

		if (slot->tts_isnull[attno - 1])
		{
			char	   *attname = NameStr(TupleDescAttr(RelationGetDescr(rel), attno - 1)->attname);
			char	   *row = capture_row_description(rel, slot);

			v->sqlerrcode = ERRCODE_NOT_NULL_VIOLATION;
			v->message = psprintf("null value in column \"%s\" of relation \"%s\" violates not-null constraint",
								  attname, RelationGetRelationName(rel));
			v->detail = row ? psprintf("Failing row contains %s.", row) : NULL;
			v->column = pstrdup(attname);
			return false;
		}
	}

	econtext = GetPerTupleExprContext(entry->estate);
	econtext->ecxt_scantuple = slot;
	for (int i = 0; i < entry->ncheck; i++)
	{
		if (!ExecCheck(entry->checkstate[i], econtext))
		{
			char	   *row = capture_row_description(rel, slot);

			v->sqlerrcode = ERRCODE_CHECK_VIOLATION;
			v->message = psprintf("new row for relation \"%s\" violates check constraint \"%s\"",
								  RelationGetRelationName(rel), entry->checkname[i]);
			v->detail = row ? psprintf("Failing row contains %s.", row) : NULL;
			v->constraint = pstrdup(entry->checkname[i]);
			ResetPerTupleExprContext(entry->estate);
			return false;
		}
	}

	for (int i = 0; i < entry->nunique; i++)
	{
		ResultRelInfo rri;
		Relation	index = index_open(entry->uniqueoids[i], RowExclusiveLock);
		ItemPointerData conflict;
		bool		ok;

		memset(&rri, 0, sizeof(rri));
		rri.type = T_ResultRelInfo;
		rri.ri_RelationDesc = rel;
		rri.ri_NumIndices = 1;
		rri.ri_IndexRelationDescs = &index;
		rri.ri_IndexRelationInfo = &entry->uniqueinfo[i];
		ok = ExecCheckIndexConstraints(&rri, slot, entry->estate, &conflict, NIL);
		/* On UPDATE the row being updated holds the key already. */
		if (!ok && oldslot != NULL && ItemPointerEquals(&conflict, &oldslot->tts_tid))
			ok = true;
		if (!ok)
		{
			Datum		values[INDEX_MAX_KEYS];
			bool		isnull[INDEX_MAX_KEYS];
			char	   *key;

			econtext->ecxt_scantuple = slot;
			FormIndexDatum(entry->uniqueinfo[i], slot, entry->estate, values, isnull);
			key = BuildIndexValueDescription(index, values, isnull);
			v->sqlerrcode = ERRCODE_UNIQUE_VIOLATION;
			v->message = psprintf("duplicate key value violates unique constraint \"%s\"",
								  RelationGetRelationName(index));
			v->detail = key ? psprintf("Key %s already exists.", key) : NULL;
			v->constraint = pstrdup(RelationGetRelationName(index));
		}
		index_close(index, NoLock);
		ResetPerTupleExprContext(entry->estate);
		if (!ok)
			return false;
	}
	ResetPerTupleExprContext(entry->estate);

	for (int i = 0; i < entry->nfk; i++)
		if (!capture_check_fk(rel, &entry->fks[i], slot, oldslot, v))
			return false;

	return true;
}

/*
 * error_detail of a failure: {detail, schema, table, column, constraint}
 * and, when given, datatype; the fields PostgreSQL attaches to the error.
 */
static Jsonb *
capture_detail_json(const char *detail, const char *schema, const char *table,
					const char *column, const char *constraint,
					bool with_datatype, const char *datatype)
{
	const char *names[6] = {"detail", "schema", "table", "column", "constraint", "datatype"};
	const char *values[6] = {detail, schema, table, column, constraint, datatype};
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (int i = 0; i < (with_datatype ? 6 : 5); i++)
	{
		appendStringInfo(&buf, "%s\"%s\": ", i > 0 ? ", " : "", names[i]);
		if (values[i])
			escape_json(&buf, values[i]);
		else
			appendStringInfoString(&buf, "null");
	}
	appendStringInfoChar(&buf, '}');
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}

static Jsonb *
capture_error_detail(Relation rel, const CaptureViolation *v)
{
	return capture_detail_json(v->detail, get_namespace_name(RelationGetNamespace(rel)),
							   RelationGetRelationName(rel), v->column, v->constraint,
							   false, NULL);
}

/* A composite datum as jsonb, through row_to_json (no type resolution needed). */
static Jsonb *
capture_row_to_jsonb(Datum composite)
{
	Datum		json = DirectFunctionCall1(row_to_json, composite);

	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
											  CStringGetDatum(text_to_cstring(DatumGetTextPP(json)))));
}

/* A row too large for a message raises the error instead of vanishing. */
static void
capture_check_size(Jsonb *payload, const char *error)
{
	if (VARSIZE(payload) > dlq_max_payload_bytes)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("captured row is too large for the DLQ"),
				 errdetail("It is %d bytes as jsonb; dlq.max_payload_bytes is %d.",
						   (int) VARSIZE(payload), dlq_max_payload_bytes),
				 errhint("The row was not inserted: %s", error)));
}

/* Store one diverted row as the extension owner. */
static void
capture_store(const char *queue, const char *component, Jsonb *payload,
			  const char *error, const char *sqlstate, Jsonb *error_detail,
			  Oid source_relation, const char *operation)
{
	DlqStoreArgs args = {0};
	DlqOwnerContext owner;

	args.queue = queue;
	args.component = component;
	args.payload = payload;
	args.error = error;
	args.sqlstate = sqlstate;
	args.error_detail = error_detail;
	args.source_relation = source_relation;
	args.operation = operation;
	args.created_by = GetUserId();

	capture_check_size(payload, error);

	dlq_become_owner(&owner);
	SPI_connect();
	(void) dlq_store_message(&args);
	SPI_finish();
	dlq_restore_caller(&owner);
}

/* The queue (and component) named in a trigger's arguments. */
static void
capture_trigger_args(Trigger *trigger, int first, const char **queue,
					 const char **component)
{
	int			nargs = trigger->tgnargs - first;

	if (nargs < 1 || nargs > 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("trigger \"%s\" must pass the queue name and optionally a component",
						trigger->tgname)));
	*queue = dlq_check_name("queue name", cstring_to_text(trigger->tgargs[first]), false);
	*component = nargs == 2 ?
		dlq_check_name("component", cstring_to_text(trigger->tgargs[first + 1]), false) :
		NULL;
}

/*
 * Diverted rows of the row trigger are buffered and stored many at a time:
 * one multi-row INSERT per CAPTURE_BATCH rows, at the end of the statement
 * (the AFTER STATEMENT trigger dlq_attach creates) and, for anything left,
 * just before commit.  Rows buffered in a subtransaction that aborts are
 * dropped with it, as their INSERT would have been.
 *
 * A flush runs SQL (dlq.queues, dlq.messages), and with it whatever triggers
 * those tables have; such a trigger may divert more rows and so buffer and
 * flush again while a flush is under way.  A flush therefore takes its rows
 * out of the buffer before it runs anything: rows diverted meanwhile go into
 * a fresh buffer, which only ever grows through capture_buffer_reserve, and
 * are stored by the nested flush or the next one.
 */
#define CAPTURE_BATCH 1000

/* Flushes before commit while each stores rows that divert new ones. */
#define CAPTURE_MAX_FLUSH_ROUNDS 100

typedef struct CaptureBuffered
{
	char	   *queue;
	char	   *component;
	Jsonb	   *payload;
	char	   *error;
	char		sqlstate[6];
	Jsonb	   *error_detail;
	Oid			source_relation;
	const char *operation;
	Oid			created_by;		/* the user whose statement diverted it */
	SubTransactionId subid;
} CaptureBuffered;

/* The buffer, in TopTransactionContext; capacity rows allocated. */
static CaptureBuffered *capture_buffer = NULL;
static int	capture_nbuffered = 0;
static int	capture_capacity = 0;
static bool capture_callbacks_registered = false;
static SPIPlanPtr capture_batch_plan = NULL;

#define CAPTURE_BATCH_NARGS 9

/* Room for n more rows in the buffer. */
static void
capture_buffer_reserve(int n)
{
	int			need = capture_nbuffered + n;

	if (need <= capture_capacity)
		return;
	need = Max(need, CAPTURE_BATCH);
	if (capture_buffer == NULL)
		capture_buffer = MemoryContextAlloc(TopTransactionContext,
											sizeof(CaptureBuffered) * need);
	else
		capture_buffer = repalloc(capture_buffer, sizeof(CaptureBuffered) * need);
	capture_capacity = need;
}

/*
 * A flush failed: put its rows back in front of those buffered since, so
 * that a subtransaction abort trims the buffer as usual (rows in order of
 * their subtransaction) and the rows of the surviving transaction stay.
 */
static void
capture_buffer_restore(CaptureBuffered *rows, int n)
{
	CaptureBuffered *later = capture_buffer;
	int			nlater = capture_nbuffered;

	capture_buffer = rows;
	capture_nbuffered = n;
	capture_capacity = n;
	if (nlater > 0)
	{
		capture_buffer_reserve(nlater);
		memcpy(capture_buffer + n, later, sizeof(CaptureBuffered) * nlater);
		capture_nbuffered += nlater;
		pfree(later);
	}
}

/* Insert n buffered rows into dlq.messages.  Runs as the owner, in SPI. */
static void
capture_store_rows(CaptureBuffered *rows, int n)
{
	Datum		values[CAPTURE_BATCH_NARGS];
	Datum	   *cols[CAPTURE_BATCH_NARGS];
	bool	   *nulls[CAPTURE_BATCH_NARGS];
	Oid			elemtypes[CAPTURE_BATCH_NARGS] = {TEXTOID, TEXTOID, JSONBOID, TEXTOID, TEXTOID,
	TEXTOID, JSONBOID, REGCLASSOID, TEXTOID};
	int			ret;

	for (int c = 0; c < CAPTURE_BATCH_NARGS; c++)
	{
		cols[c] = palloc(sizeof(Datum) * n);
		nulls[c] = palloc0(sizeof(bool) * n);
	}
	for (int i = 0; i < n; i++)
	{
		CaptureBuffered *b = &rows[i];

		cols[0][i] = CStringGetTextDatum(b->queue);
		if (b->component)
			cols[1][i] = CStringGetTextDatum(b->component);
		else
			nulls[1][i] = true;
		cols[2][i] = JsonbPGetDatum(b->payload);
		cols[3][i] = CStringGetTextDatum(b->error);
		cols[4][i] = CStringGetTextDatum(b->sqlstate);
		cols[5][i] = CStringGetTextDatum(dlq_error_class(b->sqlstate));
		cols[6][i] = JsonbPGetDatum(b->error_detail);
		cols[7][i] = ObjectIdGetDatum(b->source_relation);
		cols[8][i] = CStringGetTextDatum(b->operation);
	}
	for (int c = 0; c < CAPTURE_BATCH_NARGS; c++)
	{
		int16		typlen;
		bool		typbyval;
		char		typalign;
		int			dims[1] = {n};
		int			lbs[1] = {1};

		get_typlenbyvalalign(elemtypes[c], &typlen, &typbyval, &typalign);
		values[c] = PointerGetDatum(construct_md_array(cols[c], nulls[c], 1, dims, lbs,
													   elemtypes[c], typlen, typbyval, typalign));
	}

	if (capture_batch_plan == NULL)
	{
		Oid			types[CAPTURE_BATCH_NARGS] = {TEXTARRAYOID, TEXTARRAYOID, JSONBARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID, TEXTARRAYOID, JSONBARRAYOID, REGCLASSARRAYOID, TEXTARRAYOID};
		SPIPlanPtr	plan;

		/* The columns dlq_store_message fills, for many rows at once. */
		plan = SPI_prepare("INSERT INTO dlq.messages"
						   " (queue, component, payload, error, sqlstate, error_class, error_detail,"
						   "  source_relation, operation, max_attempts, expires_at, next_retry_at)"
						   " SELECT u.queue, u.component, u.payload, u.error, u.sqlstate, u.error_class,"
						   "  u.error_detail, u.source_relation, u.operation, q.max_attempts,"
						   "  now() + q.retention,"
						   "  CASE WHEN q.auto_retry THEN now() + dlq.retry_delay(q, 1) END"
						   " FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9) WITH ORDINALITY"
						   "  AS u(queue, component, payload, error, sqlstate, error_class,"
						   "       error_detail, source_relation, operation, ord)"
						   " JOIN dlq.queues q ON q.queue = u.queue ORDER BY u.ord",
						   CAPTURE_BATCH_NARGS, types);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		capture_batch_plan = plan;
	}
	/* Queues seen for the first time are created, recording who diverted the row. */
	for (int i = 0; i < n; i++)
		if (i == 0 || strcmp(rows[i].queue, rows[i - 1].queue) != 0)
			dlq_ensure_queue(rows[i].queue, rows[i].created_by);
	ret = SPI_execute_plan(capture_batch_plan, values, NULL, false, 0);
	if (ret != SPI_OK_INSERT || SPI_processed != n)
		elog(ERROR, "could not store %d captured rows: %s", n, SPI_result_code_string(ret));
}

/* Store the buffered rows.  Switches to the owner and starts its own SPI. */
static void
capture_flush(void)
{
	CaptureBuffered *rows = capture_buffer;
	int			n = capture_nbuffered;
	DlqOwnerContext owner;
	volatile bool pushed = false;

	if (n == 0)
		return;

	/* Taken out first: what runs below may buffer and flush again. */
	capture_buffer = NULL;
	capture_nbuffered = 0;
	capture_capacity = 0;

	PG_TRY();
	{
		if (!ActiveSnapshotSet())
		{
			PushActiveSnapshot(GetTransactionSnapshot());
			pushed = true;
		}
		dlq_become_owner(&owner);
		SPI_connect();
		capture_store_rows(rows, n);
		SPI_finish();
		dlq_restore_caller(&owner);
		if (pushed)
			PopActiveSnapshot();
	}
	PG_CATCH();
	{
		capture_buffer_restore(rows, n);
		PG_RE_THROW();
	}
	PG_END_TRY();
	pfree(rows);
}

static void
capture_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			/* A trigger on dlq's tables may divert more rows while we store. */
			for (int round = 0; capture_nbuffered > 0; round++)
			{
				if (round >= CAPTURE_MAX_FLUSH_ROUNDS)
					ereport(ERROR,
							(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
							 errmsg("storing captured rows keeps diverting more rows"),
							 errdetail("%d rounds of storing captured rows each diverted new ones.",
									   CAPTURE_MAX_FLUSH_ROUNDS),
							 errhint("Look for triggers on the tables of schema dlq that write to a table with failed-row capture.")));
				capture_flush();
			}
			break;
		default:
			/* Commit, abort, prepare: the buffer is gone with the transaction. */
			capture_buffer = NULL;
			capture_nbuffered = 0;
			capture_capacity = 0;
			break;
	}
}

static void
capture_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		while (capture_nbuffered > 0 &&
			   capture_buffer[capture_nbuffered - 1].subid >= mySubid)
			capture_nbuffered--;
	}
}

/* Buffer one diverted row; copies everything into TopTransactionContext. */
static void
capture_buffer_row(const char *queue, const char *component, Jsonb *payload,
				   const char *error, const char *sqlstate, Jsonb *error_detail,
				   Oid source_relation, const char *operation)
{
	MemoryContext old;
	CaptureBuffered *b;

	capture_check_size(payload, error);

	if (!capture_callbacks_registered)
	{
		RegisterXactCallback(capture_xact_callback, NULL);
		RegisterSubXactCallback(capture_subxact_callback, NULL);
		capture_callbacks_registered = true;
	}
	capture_buffer_reserve(1);
	old = MemoryContextSwitchTo(TopTransactionContext);
	b = &capture_buffer[capture_nbuffered];
	b->queue = pstrdup(queue);
	b->component = component ? pstrdup(component) : NULL;
	b->payload = (Jsonb *) PG_DETOAST_DATUM_COPY(JsonbPGetDatum(payload));
	b->error = pstrdup(error);
	strlcpy(b->sqlstate, sqlstate, sizeof(b->sqlstate));
	b->error_detail = (Jsonb *) PG_DETOAST_DATUM_COPY(JsonbPGetDatum(error_detail));
	b->source_relation = source_relation;
	b->operation = operation;
	b->created_by = GetUserId();
	b->subid = GetCurrentSubTransactionId();
	MemoryContextSwitchTo(old);
	/* Counted only once complete: a copy that fails leaves no half row. */
	capture_nbuffered++;

	if (capture_nbuffered >= CAPTURE_BATCH)
		capture_flush();
}

/*
 * Refuse to capture rows of a system catalog or of one of dlq's own tables:
 * storing a captured row writes dlq's tables, which would fire the trigger
 * again.  Only superusers can put a trigger there; dlq_attach never does.
 * The table's owner is passed as the role, so that only the kind of table is
 * checked here, not who fired the trigger.
 */
static void
capture_check_relation(Relation rel)
{
	char		relkind = rel->rd_rel->relkind;

	/* Foreign tables are never catalogs or dlq's. */
	if (relkind == RELKIND_RELATION || relkind == RELKIND_PARTITIONED_TABLE)
		dlq_check_bindable_relation(RelationGetRelid(rel), rel->rd_rel->relowner);
}

/*
 * The table a capture trigger was made on: for a trigger cloned onto a
 * partition, the table of the trigger it was cloned from (its topmost
 * parent), else the trigger's own table.  This is what a diverted row
 * records as its source_relation: dlq_attach on a partitioned table records
 * that table, and a trigger somebody made on a partition they own records
 * that partition, never a table above it they do not own.
 */
static Oid
capture_trigger_relation(Trigger *trigger, Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	Oid			tgoid = trigger->tgoid;
	Relation	tgrel;

	if (!trigger->tgisclone)
		return relid;
	tgrel = table_open(TriggerRelationId, AccessShareLock);
	while (OidIsValid(tgoid))
	{
		ScanKeyData key;
		SysScanDesc scan;
		HeapTuple	tup;
		Form_pg_trigger tg;

		ScanKeyInit(&key, Anum_pg_trigger_oid, BTEqualStrategyNumber,
					F_OIDEQ, ObjectIdGetDatum(tgoid));
		scan = systable_beginscan(tgrel, TriggerOidIndexId, true, NULL, 1, &key);
		tup = systable_getnext(scan);
		if (!HeapTupleIsValid(tup))
			elog(ERROR, "could not find trigger %u", tgoid);
		tg = (Form_pg_trigger) GETSTRUCT(tup);
		relid = tg->tgrelid;
		tgoid = tg->tgparentid;
		systable_endscan(scan);
	}
	table_close(tgrel, AccessShareLock);
	return relid;
}

/* What dlq_capture works out once per statement, kept in fn_extra. */
typedef struct CaptureTrigger
{
	const char *queue;
	const char *component;
	Oid			source_relation;
} CaptureTrigger;

PG_FUNCTION_INFO_V1(dlq_capture);

/*
 * dlq_capture(queue [, component]): BEFORE INSERT OR UPDATE FOR EACH ROW.
 */
Datum
dlq_capture(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleTableSlot *slot;
	TupleTableSlot *oldslot = NULL;
	HeapTuple	tuple;
	CaptureRel *entry;
	CaptureViolation v;
	CaptureTrigger *info;
	bool		is_update;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("dlq_capture must be called as a trigger")));
	/* The AFTER ... FOR EACH STATEMENT companion stores what was buffered. */
	if (TRIGGER_FIRED_AFTER(trigdata->tg_event) &&
		TRIGGER_FIRED_FOR_STATEMENT(trigdata->tg_event))
	{
		capture_check_relation(trigdata->tg_relation);
		capture_flush();
		return PointerGetDatum(NULL);
	}
	if (!TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!(TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) ||
		  TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event)))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("dlq_capture must be fired BEFORE INSERT OR UPDATE FOR EACH ROW")));

	rel = trigdata->tg_relation;
	is_update = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event);
	if (is_update)
	{
		tuple = trigdata->tg_newtuple;
		slot = trigdata->tg_newslot;
		oldslot = trigdata->tg_trigslot;
	}
	else
	{
		tuple = trigdata->tg_trigtuple;
		slot = trigdata->tg_trigslot;
	}

	if (replaying && replay_validated_relid == RelationGetRelid(rel))
		return PointerGetDatum(tuple);

	/* The table and the queue name are checked once per statement. */
	if (fcinfo->flinfo->fn_extra == NULL)
	{
		MemoryContext old;
		Oid			source;

		capture_check_relation(rel);
		source = capture_trigger_relation(trigdata->tg_trigger, rel);
		old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);
		info = palloc(sizeof(CaptureTrigger));
		capture_trigger_args(trigdata->tg_trigger, 0, &info->queue, &info->component);
		info->source_relation = source;
		MemoryContextSwitchTo(old);
		fcinfo->flinfo->fn_extra = info;
	}
	info = (CaptureTrigger *) fcinfo->flinfo->fn_extra;

	entry = capture_get_rel(rel);
	if (capture_validate(entry, rel, slot, oldslot, &v))
		return PointerGetDatum(tuple);

	if (replaying)
	{
		/* dlq_reapply_row reports it; no new message. */
		MemoryContext old = MemoryContextSwitchTo(replay_cxt);

		replay_violation = palloc0(sizeof(CaptureViolation));
		replay_violation->sqlerrcode = v.sqlerrcode;
		replay_violation->message = pstrdup(v.message);
		replay_violation->detail = v.detail ? pstrdup(v.detail) : NULL;
		replay_violation->column = v.column ? pstrdup(v.column) : NULL;
		replay_violation->constraint = v.constraint ? pstrdup(v.constraint) : NULL;
		MemoryContextSwitchTo(old);
		return PointerGetDatum(NULL);
	}

	/*
	 * Row-level security checks a new row after the BEFORE triggers: a row
	 * diverted here would skip the policies of the role that wrote it, and
	 * could be replayed later by a role they do not bind.  Such a row goes
	 * on to the executor, which raises the policy's error or the
	 * constraint's, as it would without dlq.
	 */
	if (check_enable_rls(RelationGetRelid(rel), InvalidOid, true) == RLS_ENABLED)
		return PointerGetDatum(tuple);

	capture_buffer_row(info->queue, info->component,
					   capture_row_to_jsonb(heap_copy_tuple_as_datum(tuple, RelationGetDescr(rel))),
					   v.message, unpack_sql_state(v.sqlerrcode), capture_error_detail(rel, &v),
					   info->source_relation, is_update ? "UPDATE" : "INSERT");
	return PointerGetDatum(NULL);
}

/*
 * Does view read target?  True when its SELECT rule's query has target in
 * its range table: the intake view dlq_attach made does.
 */
static bool
capture_view_reads(Relation view, Oid target)
{
	RuleLock   *rules = view->rd_rules;

	if (view->rd_rel->relkind != RELKIND_VIEW || rules == NULL)
		return false;
	for (int i = 0; i < rules->numLocks; i++)
	{
		ListCell   *lc;

		if (rules->rules[i]->event != CMD_SELECT)
			continue;
		foreach(lc, rules->rules[i]->actions)
		{
			Query	   *query = lfirst_node(Query, lc);
			ListCell   *rc;

			foreach(rc, query->rtable)
			{
				RangeTblEntry *rte = lfirst_node(RangeTblEntry, rc);

				if (rte->rtekind == RTE_RELATION && rte->relid == target)
					return true;
			}
		}
	}
	return false;
}

PG_FUNCTION_INFO_V1(dlq_capture_isolate);

/*
 * dlq_capture_isolate(queue, target [, component]): INSTEAD OF INSERT FOR
 * EACH ROW on an intake view.  Each row is inserted into target inside a
 * subtransaction; any error sends the row to the DLQ instead.
 */
Datum
dlq_capture_isolate(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Trigger    *trigger;
	Oid			target;
	const char *queue;
	const char *component;
	Jsonb	   *payload;
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	ErrorData  *volatile edata = NULL;
	SPIPlanPtr	plan;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_INSTEAD(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("dlq_capture_isolate must be fired INSTEAD OF INSERT FOR EACH ROW")));

	trigger = trigdata->tg_trigger;
	if (trigger->tgnargs < 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("trigger \"%s\" must pass the queue name and the target table",
						trigger->tgname)));
	target = DatumGetObjectId(DirectFunctionCall1(oidin, CStringGetDatum(trigger->tgargs[1])));
	{
		Trigger		shifted = *trigger;
		char	   *args[2];

		/* queue [, component] are arguments 0 and 2 */
		args[0] = trigger->tgargs[0];
		args[1] = trigger->tgnargs > 2 ? trigger->tgargs[2] : NULL;
		shifted.tgargs = args;
		shifted.tgnargs = trigger->tgnargs > 2 ? 2 : 1;
		capture_trigger_args(&shifted, 0, &queue, &component);
	}

	payload = capture_row_to_jsonb(heap_copy_tuple_as_datum(trigdata->tg_trigtuple,
															RelationGetDescr(trigdata->tg_relation)));

	/* One plan per statement and view, in the trigger's fn_extra. */
	plan = fcinfo->flinfo->fn_extra;
	SPI_connect();
	if (plan == NULL)
	{
		Oid			types[1] = {JSONBOID};
		Relation	targetrel = try_relation_open(target, AccessShareLock);
		char	   *name;

		if (targetrel == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_TABLE),
					 errmsg("table with OID %u named by trigger \"%s\" does not exist",
							target, trigger->tgname)));
		/*
		 * Captured rows record target as their source: it must be the table
		 * the intake view reads, as dlq_attach made it, and never one of
		 * dlq's tables or a catalog.
		 */
		capture_check_relation(targetrel);
		if (!capture_view_reads(trigdata->tg_relation, target))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("trigger \"%s\" names table \"%s\", which \"%s\" does not read",
							trigger->tgname, RelationGetRelationName(targetrel),
							RelationGetRelationName(trigdata->tg_relation)),
					 errhint("Create intake views with dlq_attach(table, mode => 'isolate').")));
		name = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(targetrel)),
										  RelationGetRelationName(targetrel));
		relation_close(targetrel, AccessShareLock);
		plan = SPI_prepare(psprintf("INSERT INTO %s SELECT * FROM pg_catalog.jsonb_populate_record(NULL::%s, $1)",
									name, name), 1, types);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		fcinfo->flinfo->fn_extra = plan;
	}

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		Datum		values[1] = {JsonbPGetDatum(payload)};
		int			ret = SPI_execute_plan(plan, values, NULL, false, 0);

		if (ret != SPI_OK_INSERT)
			elog(ERROR, "intake insert failed: %s", SPI_result_code_string(ret));
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_END_TRY();

	if (edata != NULL)
	{
		/*
		 * Query cancel and the like are not the row's fault.  Nor is a
		 * missing privilege or a row-level security policy: a role that may
		 * not write the row into target must not get it there through a
		 * later replay by one that may.
		 */
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
			edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN ||
			edata->sqlerrcode == ERRCODE_INSUFFICIENT_PRIVILEGE)
			ReThrowError(edata);

		capture_store(queue, component, payload, edata->message,
					  unpack_sql_state(edata->sqlerrcode),
					  capture_detail_json(edata->detail, edata->schema_name,
										  edata->table_name, edata->column_name,
										  edata->constraint_name, true,
										  edata->datatype_name),
					  target, "INSERT");
		FreeErrorData(edata);
	}
	SPI_finish();
	return PointerGetDatum(NULL);
}

/*
 * Prepare the per-target replay plans: the payload converted into the
 * table's row type, and the INSERT of those values.
 */
static void
capture_prepare_replay(CaptureRel *entry, Relation rel)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);
	char	   *name = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
												  RelationGetRelationName(rel));
	StringInfoData cols;
	StringInfoData params;
	Oid		   *types = palloc(sizeof(Oid) * (tupdesc->natts + 1));
	Oid			jtype[1] = {JSONBOID};
	SPIPlanPtr	plan;

	initStringInfo(&cols);
	initStringInfo(&params);
	entry->insertattnums = MemoryContextAlloc(entry->cxt, sizeof(AttrNumber) * (tupdesc->natts + 1));
	entry->ninsert = 0;
	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);

		if (att->attisdropped || att->attgenerated != '\0')
			continue;
		appendStringInfo(&cols, "%s%s", entry->ninsert > 0 ? ", " : "",
						 quote_identifier(NameStr(att->attname)));
		appendStringInfo(&params, "%s$%d", entry->ninsert > 0 ? ", " : "", entry->ninsert + 1);
		types[entry->ninsert] = att->atttypid;
		entry->insertattnums[entry->ninsert++] = att->attnum;
	}

	/*
	 * When every column has a scalar base type, a payload value converts
	 * through the type's input function from its JSON text, which is what
	 * jsonb_populate_record does for scalars; arrays and composites go
	 * through jsonb_populate_record itself.
	 */
	entry->fast_convert = true;
	entry->infuncs = MemoryContextAllocZero(entry->cxt, sizeof(FmgrInfo) * (tupdesc->natts + 1));
	entry->ioparams = MemoryContextAllocZero(entry->cxt, sizeof(Oid) * (tupdesc->natts + 1));
	entry->convkind = MemoryContextAllocZero(entry->cxt, tupdesc->natts + 1);
	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);
		Oid			base = getBaseType(att->atttypid);
		Oid			infunc;

		if (att->attisdropped)
			continue;
		if (type_is_array(base) || get_typtype(base) == TYPTYPE_COMPOSITE ||
			get_typtype(base) == TYPTYPE_PSEUDO)
			entry->fast_convert = false;
		entry->convkind[i] = (base == JSONOID || base == JSONBOID) ? 'j' :
			(base != att->atttypid) ? 'd' : 's';
		getTypeInputInfo(att->atttypid, &infunc, &entry->ioparams[i]);
		fmgr_info_cxt(infunc, &entry->infuncs[i], entry->cxt);
	}

	plan = SPI_prepare(psprintf("SELECT * FROM pg_catalog.jsonb_populate_record(NULL::%s, $1)", name),
					   1, jtype);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	entry->convert_plan = plan;

	plan = SPI_prepare(psprintf("INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE VALUES (%s)",
								name, cols.data, params.data),
					   entry->ninsert, types);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	entry->insert_plan = plan;
}

/*
 * Convert a payload (a JSON object keyed by column name) into slot, for a
 * table whose columns all have scalar types.  A missing key or JSON null is
 * NULL; a string is its text; other values their JSON text (json and jsonb
 * columns always take the JSON text).  Errors of the input functions raise.
 */
static void
capture_convert(CaptureRel *entry, Relation rel, Jsonb *payload, TupleTableSlot *slot)
{
	TupleDesc	tupdesc = RelationGetDescr(rel);

	if (!JB_ROOT_IS_OBJECT(payload))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("captured payload is not a JSON object")));

	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);
		const char *name = NameStr(att->attname);
		JsonbValue	vbuf;
		JsonbValue *v;
		char	   *str;
		bool		json = entry->convkind[i] == 'j';

		slot->tts_isnull[i] = true;
		slot->tts_values[i] = (Datum) 0;
		if (att->attisdropped)
			continue;
		v = getKeyJsonValueFromContainer(&payload->root, name, strlen(name), &vbuf);
		if (v == NULL || v->type == jbvNull)
		{
			/* Domains may refuse NULL: ask the input function, as populate_record does. */
			if (entry->convkind[i] == 'd')
				slot->tts_values[i] = InputFunctionCall(&entry->infuncs[i], NULL,
														entry->ioparams[i], att->atttypmod);
			continue;
		}
		if (v->type == jbvString && !json)
			str = pnstrdup(v->val.string.val, v->val.string.len);
		else if (v->type == jbvNumeric)
			str = DatumGetCString(DirectFunctionCall1(numeric_out,
													  NumericGetDatum(v->val.numeric)));
		else if (v->type == jbvBool)
			str = pstrdup(v->val.boolean ? "true" : "false");
		else if (v->type == jbvBinary)
			str = JsonbToCString(NULL, v->val.binary.data, v->val.binary.len);
		else
		{
			StringInfoData buf;

			initStringInfo(&buf);
			escape_json(&buf, pnstrdup(v->val.string.val, v->val.string.len));
			str = buf.data;
		}
		slot->tts_values[i] = InputFunctionCall(&entry->infuncs[i], str,
												entry->ioparams[i], att->atttypmod);
		slot->tts_isnull[i] = false;
	}
}

static void
capture_set_result(DlqReapplyResult *result, Relation rel, const CaptureViolation *v)
{
	result->ok = false;
	memcpy(result->sqlstate, unpack_sql_state(v->sqlerrcode), 5);
	result->sqlstate[5] = '\0';
	result->error = pstrdup(v->message);
	result->error_detail = capture_error_detail(rel, v);
}

/*
 * Re-apply a captured row to target as the current user.  See capture.h.
 */
void
dlq_reapply_row(Oid target, Jsonb *payload, const char *operation,
				DlqReapplyResult *result)
{
	Relation	rel;
	CaptureRel *entry;
	AclResult	aclresult;
	MemoryContext callercxt = CurrentMemoryContext;
	TupleTableSlot *slot;
	Datum		jvalue[1] = {JsonbPGetDatum(payload)};
	Datum	   *values;
	char	   *nulls;
	int			ret;
	CaptureViolation v;
	volatile bool inserted = false;

	memset(result, 0, sizeof(DlqReapplyResult));

	if (operation != NULL && strcmp(operation, "INSERT") != 0)
	{
		result->ok = false;
		strcpy(result->sqlstate, "0A000");
		result->error = psprintf("replay of a captured %s is not supported", operation);
		return;
	}

	rel = try_relation_open(target, RowExclusiveLock);
	if (rel == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("replay target table with OID %u does not exist", target)));
	if (rel->rd_rel->relkind != RELKIND_RELATION &&
		rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("replay target \"%s\" is not a table", RelationGetRelationName(rel))));

	aclresult = pg_class_aclcheck(target, GetUserId(), ACL_INSERT);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, OBJECT_TABLE, RelationGetRelationName(rel));

	entry = capture_get_rel(rel);
	SPI_connect();
	if (entry->insert_plan == NULL)
		capture_prepare_replay(entry, rel);

	/* The payload as the table's row type; a bad value raises here. */
	slot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsVirtual);
	ExecClearTuple(slot);
	if (entry->fast_convert)
		capture_convert(entry, rel, payload, slot);
	else
	{
		ret = SPI_execute_plan(entry->convert_plan, jvalue, NULL, true, 1);
		if (ret != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "could not convert the captured row: %s", SPI_result_code_string(ret));
	}
	if (!entry->fast_convert)
	{
		int			k = 0;
		TupleDesc	tupdesc = RelationGetDescr(rel);

		for (int i = 0; i < tupdesc->natts; i++)
		{
			if (TupleDescAttr(tupdesc, i)->attisdropped)
			{
				slot->tts_isnull[i] = true;
				continue;
			}
			k++;
			slot->tts_values[i] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
												k, &slot->tts_isnull[i]);
		}
	}
	ExecStoreVirtualTuple(slot);

	/* A partitioned table is validated per partition, by its trigger. */
	if (!entry->partitioned)
	{
		MemoryContext old = MemoryContextSwitchTo(callercxt);
		bool		ok = capture_validate(entry, rel, slot, NULL, &v);

		MemoryContextSwitchTo(old);
		if (!ok)
		{
			MemoryContextSwitchTo(callercxt);
			capture_set_result(result, rel, &v);
			ExecDropSingleTupleTableSlot(slot);
			SPI_finish();
			relation_close(rel, NoLock);
			return;
		}
	}

	values = palloc(sizeof(Datum) * entry->ninsert);
	nulls = palloc(entry->ninsert);
	for (int k = 0; k < entry->ninsert; k++)
	{
		AttrNumber	attno = entry->insertattnums[k];

		values[k] = slot->tts_values[attno - 1];
		nulls[k] = slot->tts_isnull[attno - 1] ? 'n' : ' ';
	}

	replaying = true;
	replay_validated_relid = entry->partitioned ? InvalidOid : target;
	replay_violation = NULL;
	replay_cxt = callercxt;
	PG_TRY();
	{
		ret = SPI_execute_plan(entry->insert_plan, values, nulls, false, 0);
		if (ret != SPI_OK_INSERT)
			elog(ERROR, "could not re-apply the captured row: %s", SPI_result_code_string(ret));
		inserted = SPI_processed == 1;
	}
	PG_FINALLY();
	{
		replaying = false;
		replay_validated_relid = InvalidOid;
	}
	PG_END_TRY();

	ExecDropSingleTupleTableSlot(slot);
	SPI_finish();
	MemoryContextSwitchTo(callercxt);

	if (!inserted && replay_violation != NULL)
	{
		/* The partition's trigger found a violation. */
		capture_set_result(result, rel, replay_violation);
		replay_violation = NULL;
	}
	else
		result->ok = true;	/* inserted, or skipped by one of the table's own triggers */
	relation_close(rel, NoLock);
}
