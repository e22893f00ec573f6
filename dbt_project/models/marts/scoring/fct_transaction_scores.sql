{{ config(lookback_days=var('label_delay_days')) }}

with scores as (

    select * from {{ source('scoring', 'transaction_scores') }}
    where day >= {{ window_start(var('label_delay_days')) }} and day < {{ window_end() }}

),

fraud_reports as (

    select * from {{ ref('stg_landing__fraud_reports') }}
    where report_date >= {{ window_start(var('label_delay_days')) }}

),

first_reports as (

    select
        transaction_id,
        min(reported_at) as reported_at,
        min(report_date) as report_date
    from fraud_reports
    group by transaction_id

),

final as (

    select
        scores.transaction_id,
        scores.tx_datetime,
        scores.day as tx_date,
        scores.customer_id,
        scores.terminal_id,
        scores.score,
        scores.decision,
        scores.reason_1,
        scores.reason_2,
        scores.reason_3,
        first_reports.transaction_id is not null as reported_fraud,
        first_reports.reported_at,
        date_diff('day', scores.day, first_reports.report_date) as days_to_report,
        scores.model_name,
        scores.model_version,
        scores.feature_set_version,
        scores.dagster_run_id,
        scores.scored_at
    from scores
    left join first_reports
        on scores.transaction_id = first_reports.transaction_id

)

select * from final
