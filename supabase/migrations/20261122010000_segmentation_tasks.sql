-- s3seg: segmentation tasks with credits reserved when a task is created and charged when it succeeds.
--
-- A task's price is metadata.cost (an integer >= 0, fixed at creation); metadata.attempts counts how
-- often a worker started it. Credits are charged exactly once, in the transaction that marks the task
-- done; a task that ends in error is never charged. While a task is pending or processing its cost is
-- reserved: a new task is refused when credits minus the reservations of the user's unfinished (queued)
-- tasks would not cover it.
--
-- public.create_segmentation_task(p_user_id uuid, p_text_prompt text, p_project_id uuid, p_metadata jsonb,
--                                 p_cost integer) returns uuid (the new pending, queued task's id).
--   PT402 / INSUFFICIENT_CREDITS   credits - reserved < p_cost (p_cost > 0); nothing is inserted.
--                                  DETAIL: "user … has N credits, M reserved by unfinished tasks, K required".
--   PT404 / USER_NOT_FOUND         no users_profile row for p_user_id.
--   22023 / INVALID_AMOUNT         p_cost is null or < 0.
--   (23503 foreign_key_violation   p_project_id is not one of the user's projects.)
--
-- public.finish_segmentation_task(p_task_id uuid, p_source text, p_mask text, p_overlay text, p_labels jsonb,
--                                 p_metadata jsonb) returns integer (the user's credits left).
--   PT404 / TASK_NOT_FOUND         no task p_task_id.
--   PT409 / TASK_NOT_QUEUED        the row is not a server task (queued is false);
--                                  DETAIL: "task … is not a server task (not created by create_segmentation_task);
--                                  it cannot be finished and charged here".
--   PT409 / TASK_NOT_PROCESSING    the task is not processing; DETAIL: "task … is <status>; it cannot become done".
--   PT402 / INSUFFICIENT_CREDITS   (from public.consume_credits) the user no longer has the task's cost.
--   Any error rolls everything back: the task stays processing, nothing is charged or logged.
--
-- Both are service_role only (the backend checks which user may touch which task).
--
-- Server tasks and users' own rows. Signed-in users may insert and update their own segmentation_results
-- rows through PostgREST (the CLI records results it computed locally with the user's own token). Only
-- rows with queued = true are the server's tasks: created by create_segmentation_task, run by its workers,
-- requeued when a worker dies, counted in the reservations and charged by finish_segmentation_task.
-- authenticated cannot set queued (it has column privileges on every other column, none on queued) and
-- cannot update a queued row at all (RLS), so a row a user writes is never run, never reserves and never
-- changes a server task's price or status. A user may delete their own queued task only once it has ended.


alter table public.segmentation_results add column queued boolean not null default false;

comment on column public.segmentation_results.queued is
    'a task for the server''s workers: created by create_segmentation_task; only these are run, requeued and '
    'charged. Users (authenticated) can neither set it nor change a queued row.';

-- The server's sweep: pending tasks oldest first, processing tasks by age.
create index segmentation_results_queued_active_idx
    on public.segmentation_results (status, created_at)
    where status in ('pending', 'processing') and queued;

-- Supabase's default privileges and the previous migration granted insert and update on the whole table
-- (every column, queued included) to authenticated: narrow them to the columns a user may write. (Revoking
-- the table-level privileges also drops any column-level ones; a column added later is not writable by
-- authenticated until a migration grants it explicitly.)
revoke insert, update on table public.segmentation_results from authenticated;
grant insert (id, project_id, user_id, source_image_url, mask_image_url, overlay_image_url, text_prompt, labels,
              metadata, status, error, created_at, updated_at),
      update (id, project_id, user_id, source_image_url, mask_image_url, overlay_image_url, text_prompt, labels,
              metadata, status, error, created_at, updated_at)
    on table public.segmentation_results to authenticated;

-- Users may delete their own rows, but not a server task that is still pending or processing (its GPU work
-- would be wasted; once it is done or failed, it is theirs to delete).
drop policy "Users can delete their own results" on public.segmentation_results;
create policy "Users can delete their own results" on public.segmentation_results
    for delete to authenticated
    using ((select auth.uid()) = user_id and not (queued and status in ('pending', 'processing')));

-- Users may update only their own rows that are not server tasks.
drop policy "Users can update their own results" on public.segmentation_results;
create policy "Users can update their own results" on public.segmentation_results
    for update to authenticated
    using ((select auth.uid()) = user_id and not queued)
    with check (
        (select auth.uid()) = user_id
        and (
            project_id is null
            or exists (
                select 1 from public.projects p
                where p.id = project_id and p.user_id = (select auth.uid())
            )
        )
    );


-- A task's cost as recorded in its metadata; anything that is not a non-negative number counts as 0, so a
-- row written some other way can neither break nor lower the reservation sum.
create or replace function public.segmentation_task_cost(p_metadata jsonb)
returns integer
language sql
immutable
set search_path = ''
as $$
    select case when jsonb_typeof(p_metadata -> 'cost') = 'number'
                then least(greatest(ceil((p_metadata ->> 'cost')::numeric), 0), 2147483647)::integer
                else 0 end
$$;

comment on function public.segmentation_task_cost(jsonb) is
    'metadata.cost of a segmentation task as an integer >= 0 (0 when missing or not a number). service_role only.';

revoke all on function public.segmentation_task_cost(jsonb) from public, anon, authenticated;
grant execute on function public.segmentation_task_cost(jsonb) to service_role;


create or replace function public.create_segmentation_task(
    p_user_id uuid,
    p_text_prompt text,
    p_project_id uuid,
    p_metadata jsonb,
    p_cost integer
)
returns uuid
language plpgsql
security definer
set search_path = ''
as $$
declare
    v_credits integer;
    v_reserved bigint;
    v_id uuid;
begin
    if p_cost is null or p_cost < 0 then
        raise exception 'INVALID_AMOUNT'
            using errcode = '22023', detail = format('p_cost must be >= 0, got %s', coalesce(p_cost::text, 'null'));
    end if;

    -- The profile row lock serialises task creation per user: concurrent callers see each other's
    -- reservations, so together they never reserve more than the user has.
    select credits into v_credits from public.users_profile where id = p_user_id for update;
    if not found then
        raise exception 'USER_NOT_FOUND'
            using errcode = 'PT404', detail = format('no profile for user %s', p_user_id);
    end if;

    select coalesce(sum(public.segmentation_task_cost(r.metadata)), 0) into v_reserved
      from public.segmentation_results r
     where r.user_id = p_user_id
       and r.queued
       and r.status in ('pending', 'processing');

    if p_cost > 0 and v_credits - v_reserved < p_cost then
        raise exception 'INSUFFICIENT_CREDITS'
            using errcode = 'PT402',
                  detail = format('user %s has %s credits, %s reserved by unfinished tasks, %s required',
                                  p_user_id, v_credits, v_reserved, p_cost);
    end if;

    insert into public.segmentation_results (user_id, project_id, text_prompt, metadata, status, queued)
    values (p_user_id, p_project_id, p_text_prompt,
            coalesce(p_metadata, '{}'::jsonb) || jsonb_build_object('cost', p_cost, 'attempts', 0), 'pending', true)
    returning id into v_id;

    return v_id;
end;
$$;

comment on function public.create_segmentation_task(uuid, text, uuid, jsonb, integer) is
    'Creates a pending, queued segmentation task (one for the server''s workers) reserving p_cost (>= 0) '
    'credits; returns its id. Errors: '
    'PT402 INSUFFICIENT_CREDITS (credits minus the reservations of unfinished queued tasks < p_cost), '
    'PT404 USER_NOT_FOUND, 22023 INVALID_AMOUNT. service_role only.';

revoke all on function public.create_segmentation_task(uuid, text, uuid, jsonb, integer)
    from public, anon, authenticated;
grant execute on function public.create_segmentation_task(uuid, text, uuid, jsonb, integer) to service_role;


create or replace function public.finish_segmentation_task(
    p_task_id uuid,
    p_source text,
    p_mask text,
    p_overlay text,
    p_labels jsonb,
    p_metadata jsonb
)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
    v_user_id uuid;
    v_status text;
    v_queued boolean;
    v_metadata jsonb;
    v_cost integer;
    v_remaining integer;
begin
    select r.user_id, r.status, r.queued, r.metadata into v_user_id, v_status, v_queued, v_metadata
      from public.segmentation_results r
     where r.id = p_task_id
       for update;
    if not found then
        raise exception 'TASK_NOT_FOUND'
            using errcode = 'PT404', detail = format('no task %s', p_task_id);
    end if;
    if not v_queued then
        raise exception 'TASK_NOT_QUEUED'
            using errcode = 'PT409',
                  detail = format('task %s is not a server task (not created by create_segmentation_task); '
                                  'it cannot be finished and charged here', p_task_id);
    end if;
    if v_status <> 'processing' then
        raise exception 'TASK_NOT_PROCESSING'
            using errcode = 'PT409', detail = format('task %s is %s; it cannot become done', p_task_id, v_status);
    end if;

    v_cost := public.segmentation_task_cost(v_metadata);
    -- The price and the attempt count are the task's own: the caller's metadata cannot change them.
    update public.segmentation_results
       set status = 'done',
           source_image_url = p_source,
           mask_image_url = p_mask,
           overlay_image_url = p_overlay,
           labels = coalesce(p_labels, '[]'::jsonb),
           metadata = metadata || (coalesce(p_metadata, '{}'::jsonb) - 'cost' - 'attempts')
     where id = p_task_id;

    if v_cost > 0 then
        v_remaining := public.consume_credits(v_user_id, v_cost, 'segmentation',
                                              jsonb_build_object('task_id', p_task_id));
    else
        insert into public.usage_logs (user_id, action, credits_used, metadata)
        values (v_user_id, 'segmentation', 0, jsonb_build_object('task_id', p_task_id));
        select credits into v_remaining from public.users_profile where id = v_user_id;
    end if;

    return v_remaining;
end;
$$;

comment on function public.finish_segmentation_task(uuid, text, text, text, jsonb, jsonb) is
    'Marks a processing queued task done with its results and charges its metadata.cost (a 0-credit usage row '
    'when 0) in one transaction; returns the credits left. Errors: PT404 TASK_NOT_FOUND, PT409 TASK_NOT_QUEUED '
    '(not a server task), PT409 TASK_NOT_PROCESSING, '
    'PT402 INSUFFICIENT_CREDITS (nothing changes). service_role only.';

revoke all on function public.finish_segmentation_task(uuid, text, text, text, jsonb, jsonb)
    from public, anon, authenticated;
grant execute on function public.finish_segmentation_task(uuid, text, text, text, jsonb, jsonb) to service_role;
